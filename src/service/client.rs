//! The inference client: connects, learns the hosted models' architectures, and runs
//! private inferences; the input never leaves the client in the clear and only the client
//! learns the logits.
//!
//! ```no_run
//! let mut client = cipherml::client::Client::connect("127.0.0.1:7878").unwrap();
//! let x = ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[1, 8, 8]));
//! let logits = client.infer("digits_cnn", &x).unwrap();
//! client.close().unwrap();
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cipherml_he::ckks::{Ciphertext as CkksCiphertext, CkksParameters, Decryptor};
use cipherml_mpc::net::{Channel, ChannelConfig, Stats, TcpChannel};
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::share::PartyId;
use ndarray::{ArrayD, IxDyn};

use super::lazy::LazyParty;
use crate::key_cache::KeyId;
use crate::key_store::{generate_bfv, generate_ckks, KeyStore, StoredBfv};
use crate::nn::{CkksModel, PreparedModel, Sequential};
use crate::protocol::{
    recv, send, ClientMsg, HeParams, ModelInfo, ModelMode, ProtocolError, ServerMsg, MAX_BATCH,
    PROTOCOL_VERSION,
};
use crate::tensor::{
    decrypt_output, encrypt_input, LinkKeys, SessionConfig, SessionSetup, MAX_Q_BITS,
};
pub use crate::tls::ClientTls;

/// How the client connects.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The bearer token, if the server requires one.
    pub token: Option<String>,
    /// TLS: the CA to trust (and the server name to check), or plain TCP if `None`.
    pub tls: Option<ClientTls>,
    /// Timeouts and message limits.
    pub channel: ChannelConfig,
    /// A directory where the client keeps its keys between runs (see
    /// [`crate::key_store`]): secret keys (mode 0600) and evaluation keys are loaded from
    /// it, or generated and stored there on first use, and the hello announces their ids so
    /// that the server, if it still caches them, needs no upload. `None`: fresh keys for
    /// this session only, not cached by the server.
    pub key_dir: Option<PathBuf>,
}

/// The client's CKKS state for one model: its keys and the model's shapes.
struct CkksClient {
    model: CkksModel,
    params: Arc<CkksParameters>,
    decryptor: Decryptor,
    /// The public, relinearization and Galois keys as uploaded, until they are on the
    /// server (uploaded, or cached there).
    upload: Option<[Vec<u8>; 3]>,
}

/// The client's BFV keys (with any hybrid model hosted).
struct BfvSession {
    keys: StoredBfv,
    /// Whether the server has the public key (uploaded this session, or cached).
    on_server: bool,
}

/// A connected client session.
pub struct Client {
    link: LazyParty<Box<dyn Channel + Send>>,
    models: Vec<ModelInfo>,
    compiled: HashMap<String, Compiled>,
    bfv: Option<BfvSession>,
    store: Option<KeyStore>,
    cached: Vec<KeyId>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "models",
                &self.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Largest union bound a server may announce (`2^64` coefficients).
const MAX_REVEAL_BITS: u32 = 64;

impl Client {
    /// Connects to `addr` over plain TCP: one round trip (the hello); the OT set-up waits
    /// for the first hybrid inference.
    pub fn connect(addr: &str) -> Result<Self, ProtocolError> {
        Self::connect_with(addr, &ClientOptions::default())
    }

    /// As [`Client::connect`], presenting a bearer token.
    pub fn connect_authenticated(addr: &str, token: Option<&str>) -> Result<Self, ProtocolError> {
        Self::connect_with(
            addr,
            &ClientOptions {
                token: token.map(str::to_string),
                ..Default::default()
            },
        )
    }

    /// Connects with `options` (TLS, token, limits, key directory).
    pub fn connect_with(addr: &str, options: &ClientOptions) -> Result<Self, ProtocolError> {
        let store = options.key_dir.as_ref().map(KeyStore::open).transpose()?;
        let mut ch: Box<dyn Channel + Send> = match &options.tls {
            Some(tls) => Box::new(tls.connect(addr, options.channel)?),
            None => Box::new(TcpChannel::connect(addr, options.channel)?),
        };
        send(
            &mut ch,
            &ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                token: options.token.clone(),
                held_keys: store.as_ref().map(KeyStore::held_ids),
            },
        )?;
        let (models, cached) = match recv::<_, ServerMsg>(&mut ch)? {
            ServerMsg::Hello {
                models,
                cached_keys,
                ..
            } => (models, cached_keys),
            ServerMsg::Error { code, message } => {
                return Err(ProtocolError::Refused { code, message })
            }
            other => return Err(ProtocolError::Unexpected(format!("{other:?}"))),
        };
        // With any hybrid model hosted, the BFV keys: the public key goes up once for the
        // session, before the first hybrid inference, unless the server has it cached (the
        // server re-randomizes its encrypted replies with it).
        let bfv = if models.iter().any(|m| m.mode == ModelMode::Hybrid) {
            // The hybrid models share one Q (the server fits it to them and announces it).
            let mut qs = models
                .iter()
                .filter(|m| m.mode == ModelMode::Hybrid)
                .map(|m| m.q_bits);
            let q_bits = qs.next().unwrap_or(0);
            if qs.any(|q| q != q_bits) || q_bits > MAX_Q_BITS {
                return Err(ProtocolError::Unexpected(format!(
                    "hybrid models announced with different or oversized BFV moduli (first \
                     {q_bits} bits, at most {MAX_Q_BITS})"
                )));
            }
            let params = cipherml_he::bfv::BfvParameters::new(
                &SessionConfig {
                    q_bits,
                    ..SessionConfig::default()
                }
                .bfv_literal(),
            )
            .map_err(crate::nn::NnError::from)?;
            let keys = match &store {
                Some(store) => store.bfv(&params)?,
                None => generate_bfv(&params),
            };
            let on_server = store.is_some() && cached.contains(&keys.id);
            Some(BfvSession { keys, on_server })
        } else {
            None
        };
        Ok(Self {
            link: LazyParty::new(PartyId::P0, ch),
            models,
            compiled: HashMap::new(),
            bfv,
            store,
            cached,
        })
    }

    /// The models the server hosts.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    /// The ids of this client's keys that the server had cached at the hello (their
    /// upload is skipped); empty without a key directory.
    pub fn cached_keys(&self) -> &[KeyId] {
        &self.cached
    }

    /// Whether the two-party set-up (base OTs) has run in this session (it runs before
    /// the first hybrid inference).
    pub fn is_party_set_up(&self) -> bool {
        self.link.is_set_up()
    }

    /// Compiles `model` from its announced architecture (once), checking that the client
    /// arrives at the parameters the server announced.
    fn prepare(&mut self, model: &str) -> Result<(), ProtocolError> {
        if self.compiled.contains_key(model) {
            return Ok(());
        }
        let info = self
            .models
            .iter()
            .find(|m| m.name == model)
            .ok_or_else(|| ProtocolError::Refused {
                code: crate::protocol::RefusalCode::UnknownModel,
                message: format!("the server hosts no model named {model:?}"),
            })?;
        let arch = Sequential::from_architecture(&info.architecture)?;
        // The announced shapes must be the architecture's (a hostile server could announce
        // others to make the client allocate or index out of range).
        let shapes = arch.shapes()?;
        if arch.input_shape() != info.input_shape.as_slice()
            || shapes.last().map(Vec::as_slice) != Some(info.output_shape.as_slice())
        {
            return Err(ProtocolError::Unexpected(format!(
                "model {model:?}: announced shapes {:?} -> {:?} differ from its architecture's",
                info.input_shape, info.output_shape
            )));
        }
        // The parameters the client arrives at must be the ones announced, field by field;
        // for CKKS this is checked before any key is generated or stored.
        let check = |derived: HeParams| match info.params.first_difference(&derived) {
            None => Ok(()),
            Some(field) => Err(ProtocolError::Unexpected(format!(
                "model {model:?}: the server announced {} but the architecture gives {} \
                 ({field} differs)",
                info.params, derived
            ))),
        };
        let compiled = match info.mode {
            ModelMode::Hybrid => {
                // The layout only (zero weights), lowered as the server lowered it: its Q and
                // its session's reveal bound (the choices depend on both). The flooding is
                // the server's concern.
                let config = SessionConfig {
                    network: info.network.model(),
                    q_bits: info.q_bits,
                    reveal_log2: info.reveal_log2.min(MAX_REVEAL_BITS),
                    ..SessionConfig::default()
                };
                let h = PreparedModel::new(&arch, &config, false)?;
                check(HeParams::of_bfv(h.params()))?;
                Compiled::Hybrid(h)
            }
            ModelMode::Ckks => {
                let (cm, params) = CkksModel::for_model(&arch)?;
                check(HeParams::of_ckks(&params))?;
                let keys = match &self.store {
                    Some(store) => store.ckks(&params, cm.galois_elements())?,
                    None => generate_ckks(&params, cm.galois_elements())
                        .map_err(crate::nn::NnError::from)?,
                };
                let on_server = self.store.is_some() && self.cached.contains(&keys.id);
                let client = CkksClient {
                    decryptor: Decryptor::new(&params, keys.sk)
                        .map_err(crate::nn::NnError::from)?,
                    model: cm,
                    params,
                    upload: (!on_server).then_some([keys.pk, keys.rlk, keys.galois]),
                };
                Compiled::Ckks(Box::new(client))
            }
        };
        self.compiled.insert(model.to_string(), compiled);
        Ok(())
    }

    /// One private inference with `model`: returns the logits (only the client learns them).
    pub fn infer(&mut self, model: &str, x: &ArrayD<f64>) -> Result<ArrayD<f64>, ProtocolError> {
        let batch = x.clone().insert_axis(ndarray::Axis(0));
        let y = self.infer_batch(model, &batch)?;
        Ok(y.index_axis_move(ndarray::Axis(0), 0))
    }

    /// Private inference on a batch (first axis) in one request: returns the logits of
    /// every row.
    pub fn infer_batch(
        &mut self,
        model: &str,
        x: &ArrayD<f64>,
    ) -> Result<ArrayD<f64>, ProtocolError> {
        let rows = x.shape().first().copied().unwrap_or(0);
        if rows == 0 || rows > MAX_BATCH as usize {
            return Err(ProtocolError::Refused {
                code: crate::protocol::RefusalCode::BadRequest,
                message: format!("batch of {rows} inputs: must be 1 to {MAX_BATCH}"),
            });
        }
        self.prepare(model)?;
        // Every row is checked before anything is sent.
        let info = self
            .models
            .iter()
            .find(|m| m.name == model)
            .expect("prepared");
        if x.shape()[1..] != info.input_shape[..] {
            return Err(crate::nn::NnError::LayerShape {
                layer: "input".into(),
                input: x.shape()[1..].to_vec(),
            });
        }
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(crate::nn::NnError::NonFinite { index, value });
        }
        let output_shape = info.output_shape.clone();
        let compiled = self.compiled.get_mut(model).expect("prepared");
        if let Compiled::Ckks(c) = compiled {
            if let Some([pk, rlk, galois]) = &c.upload {
                let ch = self.link.channel();
                send(
                    ch,
                    &ClientMsg::UploadKeys {
                        model: model.into(),
                    },
                )?;
                ch.send(pk)?;
                ch.send(rlk)?;
                ch.send(galois)?;
                expect_ok(ch)?;
                c.upload = None;
            }
        }
        let hybrid = matches!(compiled, Compiled::Hybrid(_));
        send(
            self.link.channel(),
            &ClientMsg::Infer {
                model: model.into(),
                batch: rows as u32,
            },
        )?;
        expect_ok(self.link.channel())?;
        if hybrid {
            // The session's first hybrid inference sets up OT, then sends the BFV public
            // key unless the server has it.
            let bfv = self.bfv.as_mut().ok_or_else(|| {
                ProtocolError::Unexpected("a hybrid model, but no BFV keys".into())
            })?;
            let party = self.link.party()?;
            if !bfv.on_server {
                // Queued: it leaves with the inference's first flight.
                party.channel().send(&bfv.keys.pk)?;
                bfv.on_server = true;
            }
        }
        let mut out = Vec::with_capacity(rows * output_shape.iter().product::<usize>());
        for row in x.outer_iter() {
            let row = row.to_owned();
            let y = match &self.compiled[model] {
                Compiled::Hybrid(h) => {
                    let bfv = self.bfv.as_ref().ok_or_else(|| {
                        ProtocolError::Unexpected("a hybrid model, but no BFV keys".into())
                    })?;
                    let setup = SessionSetup::new(
                        h.config().clone(),
                        h.params().clone(),
                        LinkKeys::Client(bfv.keys.sk.clone()),
                        PartyId::P0,
                    )?;
                    self.link.with_session(setup, |s| h.run_client(s, &row))?
                }
                Compiled::Ckks(c) => ckks_round_trip(self.link.channel(), c, &row, &output_shape)?,
            };
            out.extend(y.iter().copied());
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(&output_shape);
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("shape"))
    }

    /// Bytes exchanged so far (set-up included).
    pub fn bytes(&self) -> u64 {
        let s = self.link.stats();
        s.bytes_sent + s.bytes_received
    }

    /// The traffic so far (bytes, messages, flights), the hello included.
    pub fn stats(&self) -> Stats {
        self.link.stats()
    }

    /// Ends the session.
    pub fn close(mut self) -> Result<(), ProtocolError> {
        send(self.link.channel(), &ClientMsg::Bye)
    }
}

fn expect_ok<C: Channel + ?Sized>(ch: &mut C) -> Result<(), ProtocolError> {
    match recv::<_, ServerMsg>(ch)? {
        ServerMsg::Ok => Ok(()),
        ServerMsg::Error { code, message } => Err(ProtocolError::Refused { code, message }),
        other => Err(ProtocolError::Unexpected(format!("{other:?}"))),
    }
}

/// Encrypts one input (seeded symmetric encryption), sends it, and decrypts the reply.
fn ckks_round_trip<C: Channel + ?Sized>(
    ch: &mut C,
    c: &CkksClient,
    x: &ArrayD<f64>,
    output_shape: &[usize],
) -> Result<ArrayD<f64>, ProtocolError> {
    // The engine's key-owner side: the same encoding and encryption as a session's.
    let flat: Vec<f64> = x.iter().copied().collect();
    let ct = encrypt_input(
        &c.params,
        &c.decryptor,
        &flat,
        c.model.input_level(),
        &mut os_rng(),
    )?;
    ch.send(&ct.to_bytes(&c.params))?;
    expect_ok(ch)?;
    let reply = ch.recv()?;
    let y = CkksCiphertext::from_bytes(&c.params, &reply)?;
    c.model
        .finish(decrypt_output(&c.decryptor, &y, output_shape)?)
}

/// A model compiled on the client's side (from the architecture the server announced).
enum Compiled {
    Hybrid(PreparedModel),
    Ckks(Box<CkksClient>),
}
