//! The inference client: connects, picks a model, and runs private inferences; the input
//! never leaves the client in the clear and only the client learns the logits.
//!
//! ```no_run
//! let mut client = cipherml::client::Client::connect("127.0.0.1:7878", "digits_cnn").unwrap();
//! let x = ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[1, 8, 8]));
//! let logits = client.infer(&x).unwrap();
//! ```

use std::sync::Arc;

use cipherml_he::rlwe::SecretKey;
use cipherml_mpc::net::{ChannelConfig, TcpChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::share::PartyId;
use ndarray::ArrayD;
use rand_chacha::ChaCha20Rng;

use crate::nn::{HybridConfig, HybridModel, Sequential};
use crate::protocol::{
    recv, send, ClientMsg, ModelInfo, ProtocolError, ServerMsg, PROTOCOL_VERSION,
};

/// A connected client session for one model.
pub struct Client {
    party: Party<TcpChannel, ChaCha20Rng>,
    model: HybridModel,
    info: ModelInfo,
    sk: Arc<SecretKey>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("model", &self.info.name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `addr` and selects `model`. The client needs only the architecture, which
    /// it learns from the model file it was given (`arch`); the server keeps the weights.
    pub fn connect_with(addr: &str, model: &str, arch: &Sequential) -> Result<Self, ProtocolError> {
        Self::connect_authenticated(addr, model, arch, None)
    }

    /// As [`Client::connect_with`], presenting a bearer token.
    pub fn connect_authenticated(
        addr: &str,
        model: &str,
        arch: &Sequential,
        token: Option<&str>,
    ) -> Result<Self, ProtocolError> {
        let mut ch = TcpChannel::connect(addr, ChannelConfig::default())?;
        send(
            &mut ch,
            &ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                token: token.map(str::to_string),
            },
        )?;
        let models = match recv::<_, ServerMsg>(&mut ch)? {
            ServerMsg::Hello { models, .. } => models,
            ServerMsg::Error { message } => return Err(ProtocolError::Refused(message)),
            other => return Err(ProtocolError::Unexpected(format!("{other:?}"))),
        };
        let info = models
            .into_iter()
            .find(|m| m.name == model)
            .ok_or_else(|| {
                ProtocolError::Refused(format!("the server hosts no model named {model:?}"))
            })?;
        if info.input_shape != arch.input_shape() {
            return Err(ProtocolError::Refused(format!(
                "architecture mismatch: server input {:?}, local {:?}",
                info.input_shape,
                arch.input_shape()
            )));
        }
        send(
            &mut ch,
            &ClientMsg::Select {
                model: model.into(),
            },
        )?;
        match recv::<_, ServerMsg>(&mut ch)? {
            ServerMsg::Ok => {}
            ServerMsg::Error { message } => return Err(ProtocolError::Refused(message)),
            other => return Err(ProtocolError::Unexpected(format!("{other:?}"))),
        }
        let compiled = HybridModel::compile(arch, &HybridConfig::default(), false)?;
        let party = Party::setup(PartyId::P0, ch, os_rng())?;
        let sk = Arc::new(SecretKey::random(
            compiled.params().context(),
            &mut os_rng(),
        ));
        Ok(Self {
            party,
            model: compiled,
            info,
            sk,
        })
    }

    /// Connects with the architecture of a bundled model (`models/NAME.onnx`).
    pub fn connect(addr: &str, model: &str) -> Result<Self, ProtocolError> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(format!("{model}.onnx"));
        let arch = crate::nn::load_onnx(path)?;
        Self::connect_with(addr, model, &arch)
    }

    /// The model's description from the server.
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// One private inference: returns the logits (only the client learns them).
    pub fn infer(&mut self, x: &ArrayD<f64>) -> Result<ArrayD<f64>, ProtocolError> {
        send(self.party.channel(), &ClientMsg::Infer)?;
        Ok(self.model.run_client(&mut self.party, &self.sk, x)?)
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
