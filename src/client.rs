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
use std::sync::Arc;

use cipherml_he::ckks::{Ciphertext as CkksCiphertext, CkksParameters, Decryptor, Encoder};
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml_he::tensor::CkksTensor;
use cipherml_mpc::net::{Channel, ChannelConfig, TcpChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::share::PartyId;
use ndarray::{ArrayD, IxDyn};
use rand_chacha::ChaCha20Rng;

use crate::nn::{CkksModel, HybridConfig, HybridModel, Sequential};
use crate::protocol::{
    recv, send, ClientMsg, ModelInfo, ProtocolError, ServerMsg, MAX_BATCH, PROTOCOL_VERSION,
};
use crate::server::{describe_bfv, describe_ckks};
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
}

/// A model compiled on the client's side (from the architecture the server announced).
enum Compiled {
    Hybrid(HybridModel),
    Ckks(Box<CkksClient>),
}

/// The client's CKKS state for one model: its keys and the model's shapes.
struct CkksClient {
    model: CkksModel,
    params: Arc<CkksParameters>,
    encoder: Encoder,
    decryptor: Decryptor,
    keys_uploaded: bool,
    pk: PublicKey,
    rlk: RelinKey,
    galois: GaloisKeys,
}

/// A connected client session.
pub struct Client {
    party: Party<Box<dyn Channel + Send>, ChaCha20Rng>,
    models: Vec<ModelInfo>,
    compiled: HashMap<String, Compiled>,
    sk: Option<Arc<SecretKey>>,
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

impl Client {
    /// Connects to `addr` over plain TCP (hello, then OT set-up).
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

    /// Connects with `options` (TLS, token, limits).
    pub fn connect_with(addr: &str, options: &ClientOptions) -> Result<Self, ProtocolError> {
        let mut ch: Box<dyn Channel + Send> = match &options.tls {
            Some(tls) => Box::new(tls.connect(addr, options.channel)?),
            None => Box::new(TcpChannel::connect(addr, options.channel)?),
        };
        send(
            &mut ch,
            &ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                token: options.token.clone(),
            },
        )?;
        let models = match recv::<_, ServerMsg>(&mut ch)? {
            ServerMsg::Hello { models, .. } => models,
            ServerMsg::Error { message } => return Err(ProtocolError::Refused(message)),
            other => return Err(ProtocolError::Unexpected(format!("{other:?}"))),
        };
        let mut party = Party::setup(PartyId::P0, ch, os_rng())?;
        // With any hybrid model hosted, the BFV public key goes up once for the session
        // (the server re-randomizes its encrypted replies with it).
        let mut sk = None;
        if models.iter().any(|m| m.mode == "hybrid") {
            let params =
                cipherml_he::bfv::BfvParameters::new(&HybridConfig::default().bfv_literal())
                    .map_err(crate::nn::NnError::from)?;
            let key = Arc::new(SecretKey::random(params.context(), &mut os_rng()));
            crate::nn::hybrid::send_public_key(&params, &mut party, &key)?;
            sk = Some(key);
        }
        Ok(Self {
            party,
            models,
            compiled: HashMap::new(),
            sk,
        })
    }

    /// The models the server hosts.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
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
            .ok_or_else(|| {
                ProtocolError::Refused(format!("the server hosts no model named {model:?}"))
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
        let (compiled, params) = match info.mode.as_str() {
            "hybrid" => {
                let h = HybridModel::compile(&arch, &HybridConfig::default(), false)?;
                let desc = describe_bfv(h.params());
                (Compiled::Hybrid(h), desc)
            }
            "ckks" => {
                let (cm, params) = CkksModel::for_model(&arch)?;
                let mut rng = os_rng();
                let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
                let pk = PublicKey::new(&sk, &mut rng);
                let rlk = RelinKey::new(&sk, &mut rng);
                let galois = GaloisKeys::new(&sk, cm.galois_elements(), &mut rng)
                    .map_err(crate::nn::NnError::from)?;
                let desc = describe_ckks(&params);
                let client = CkksClient {
                    encoder: Encoder::new(&params),
                    decryptor: Decryptor::new(&params, sk).map_err(crate::nn::NnError::from)?,
                    model: cm,
                    params,
                    keys_uploaded: false,
                    pk,
                    rlk,
                    galois,
                };
                (Compiled::Ckks(Box::new(client)), desc)
            }
            other => {
                return Err(ProtocolError::Unexpected(format!(
                    "model {model:?} in unknown mode {other:?}"
                )))
            }
        };
        if params != info.params {
            return Err(ProtocolError::Unexpected(format!(
                "model {model:?}: the server announced {:?}, the architecture gives {params:?}",
                info.params
            )));
        }
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
            return Err(ProtocolError::Refused(format!(
                "batch of {rows} inputs: must be 1 to {MAX_BATCH}"
            )));
        }
        self.prepare(model)?;
        // Every row is checked before anything is sent.
        let info = self
            .models
            .iter()
            .find(|m| m.name == model)
            .expect("prepared");
        if x.shape()[1..] != info.input_shape[..] {
            return Err(crate::nn::NnError::Shape {
                layer: "input".into(),
                input: x.shape()[1..].to_vec(),
            }
            .into());
        }
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(crate::nn::NnError::NonFinite { index, value }.into());
        }
        let output_shape = info.output_shape.clone();
        if let Compiled::Ckks(c) = self.compiled.get_mut(model).expect("prepared") {
            if !c.keys_uploaded {
                send(
                    self.party.channel(),
                    &ClientMsg::UploadKeys {
                        model: model.into(),
                    },
                )?;
                let ctx = c.params.context();
                self.party.channel().send(&c.pk.to_bytes(ctx))?;
                self.party.channel().send(&c.rlk.to_bytes(ctx))?;
                self.party.channel().send(&c.galois.to_bytes(ctx))?;
                expect_ok(self.party.channel())?;
                c.keys_uploaded = true;
            }
        }
        send(
            self.party.channel(),
            &ClientMsg::Infer {
                model: model.into(),
                batch: rows as u32,
            },
        )?;
        expect_ok(self.party.channel())?;
        let mut out = Vec::with_capacity(rows * output_shape.iter().product::<usize>());
        for row in x.outer_iter() {
            let row = row.to_owned();
            let y = match &self.compiled[model] {
                Compiled::Hybrid(h) => {
                    let sk = self.sk.as_ref().ok_or_else(|| {
                        ProtocolError::Unexpected("a hybrid model, but no key set-up".into())
                    })?;
                    h.run_client(&mut self.party, sk, &row)?
                }
                Compiled::Ckks(c) => ckks_round_trip(&mut self.party, c, &row, &output_shape)?,
            };
            out.extend(y.iter().copied());
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(&output_shape);
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("shape"))
    }

    /// Bytes exchanged so far (set-up included).
    pub fn bytes(&self) -> u64 {
        let s = self.party.stats();
        s.bytes_sent + s.bytes_received
    }

    /// Ends the session.
    pub fn close(mut self) -> Result<(), ProtocolError> {
        send(self.party.channel(), &ClientMsg::Bye)
    }
}

fn expect_ok<C: Channel + ?Sized>(ch: &mut C) -> Result<(), ProtocolError> {
    match recv::<_, ServerMsg>(ch)? {
        ServerMsg::Ok => Ok(()),
        ServerMsg::Error { message } => Err(ProtocolError::Refused(message)),
        other => Err(ProtocolError::Unexpected(format!("{other:?}"))),
    }
}

/// Encrypts one input (seeded symmetric encryption), sends it, and decrypts the reply.
fn ckks_round_trip(
    party: &mut Party<Box<dyn Channel + Send>, ChaCha20Rng>,
    c: &CkksClient,
    x: &ArrayD<f64>,
    output_shape: &[usize],
) -> Result<ArrayD<f64>, ProtocolError> {
    let he = |e: cipherml_he::Error| ProtocolError::Nn(e.into());
    let period = x.len().max(1).next_power_of_two();
    let slots = c.params.degree() / 2;
    let flat: Vec<f64> = x.iter().copied().collect();
    let pt = c
        .encoder
        .encode_f64(
            &CkksTensor::layout(&flat, period, slots),
            c.model.input_level(),
            c.params.default_scale(),
        )
        .map_err(he)?;
    let ct = c
        .decryptor
        .encrypt_symmetric(&pt, &mut os_rng())
        .map_err(he)?;
    party.channel().send(&ct.to_bytes(&c.params))?;
    expect_ok(party.channel())?;
    let reply = party.channel().recv()?;
    let y = CkksCiphertext::from_bytes(&c.params, &reply).map_err(he)?;
    let values = c.decryptor.decrypt_f64(&y).map_err(he)?;
    let len: usize = output_shape.iter().product();
    let values = values.get(..len).ok_or_else(|| {
        ProtocolError::Unexpected(format!("{len} outputs announced, {} slots", values.len()))
    })?;
    Ok(ArrayD::from_shape_vec(IxDyn(output_shape), values.to_vec()).expect("shape"))
}
