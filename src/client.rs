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

/// A connected client session.
pub struct Client {
    party: Party<TcpChannel, ChaCha20Rng>,
    models: Vec<ModelInfo>,
    compiled: HashMap<String, HybridModel>,
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
    /// Connects to `addr` (hello, then OT set-up).
    pub fn connect(addr: &str) -> Result<Self, ProtocolError> {
        Self::connect_authenticated(addr, None)
    }

    /// As [`Client::connect`], presenting a bearer token.
    pub fn connect_authenticated(addr: &str, token: Option<&str>) -> Result<Self, ProtocolError> {
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
        let party = Party::setup(PartyId::P0, ch, os_rng())?;
        Ok(Self {
            party,
            models,
            compiled: HashMap::new(),
            sk: None,
        })
    }

    /// The models the server hosts.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    /// One private inference with `model`: returns the logits (only the client learns them).
    pub fn infer(&mut self, model: &str, x: &ArrayD<f64>) -> Result<ArrayD<f64>, ProtocolError> {
        if !self.compiled.contains_key(model) {
            let info = self
                .models
                .iter()
                .find(|m| m.name == model)
                .ok_or_else(|| {
                    ProtocolError::Refused(format!("the server hosts no model named {model:?}"))
                })?;
            let arch = Sequential::from_architecture(&info.architecture)?;
            let compiled = HybridModel::compile(&arch, &HybridConfig::default(), false)?;
            self.compiled.insert(model.to_string(), compiled);
        }
        let compiled = &self.compiled[model];
        if self.sk.is_none() {
            self.sk = Some(Arc::new(SecretKey::random(
                compiled.params().context(),
                &mut os_rng(),
            )));
        }
        send(
            self.party.channel(),
            &ClientMsg::Infer {
                model: model.into(),
            },
        )?;
        match recv::<_, ServerMsg>(self.party.channel())? {
            ServerMsg::Ok => {}
            ServerMsg::Error { message } => return Err(ProtocolError::Refused(message)),
            other => return Err(ProtocolError::Unexpected(format!("{other:?}"))),
        }
        let sk = self.sk.as_ref().expect("set above");
        Ok(compiled.run_client(&mut self.party, sk, x)?)
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
