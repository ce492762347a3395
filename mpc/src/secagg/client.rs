//! The client of a secure-aggregation round: a state machine that turns what the server
//! forwarded into the next message to send.

use std::collections::BTreeMap;

use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::config::SecAggConfig;
use super::crypto;
use super::error::{SecAggError, SecAggResult, StageState};
use super::graph::NeighbourGraph;
use super::messages::{
    AdvertiseKeys, EncryptedShare, IncomingShares, MaskedInput, NeighbourKeys, RevealedShare,
    ShareKeys, ShareKind, UnmaskRequest, UnmaskResponse, SHARE_PLAINTEXT_LEN,
};
use super::shamir::{self, ShareValue, CHUNKS};
use super::{ClientId, Stage};

/// The client's secrets, zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
struct ClientSecrets {
    /// X25519 secret for share encryption.
    c_sk: [u8; 32],
    /// X25519 secret for pairwise masks.
    s_sk: [u8; 32],
    /// Self-mask seed `b_u` (drawn in ShareKeys).
    b: [u8; 32],
}

/// Shares this client holds of one owner's secrets, zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
struct HeldShares {
    b: ShareValue,
    s_sk: ShareValue,
}

/// One client of one round. Not thread-safe to share (`&mut self` methods); `Send`.
/// All secret material (keys, self-mask seed, shares held) is zeroized on drop.
///
/// Call in order: [`advertise_keys`](Self::advertise_keys),
/// [`share_keys`](Self::share_keys), [`masked_input`](Self::masked_input),
/// [`unmask`](Self::unmask); any other order is refused with
/// [`SecAggError::WrongStage`], and a refused message leaves the client failed.
pub struct SecAggClient {
    config: SecAggConfig,
    id: ClientId,
    round_seed: [u8; 32],
    graph: NeighbourGraph,
    state: StageState,
    secrets: ClientSecrets,
    c_pk: [u8; 32],
    s_pk: [u8; 32],
    /// Neighbours in U1 (as forwarded): id -> (c_pk, s_pk).
    neighbours_u1: BTreeMap<ClientId, ([u8; 32], [u8; 32])>,
    /// Neighbours whose shares arrived (the client's view of U2), sorted.
    neighbours_u2: Vec<ClientId>,
    /// Shares held, by owner (this client included).
    held: BTreeMap<ClientId, HeldShares>,
}

impl std::fmt::Debug for SecAggClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecAggClient")
            .field("id", &self.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl SecAggClient {
    /// A client with id `id < n` for the round with public seed `round_seed`; draws its two
    /// X25519 key pairs from `rng`.
    pub fn new<R: RngCore + CryptoRng + ?Sized>(
        config: &SecAggConfig,
        id: ClientId,
        round_seed: [u8; 32],
        rng: &mut R,
    ) -> SecAggResult<Self> {
        if id >= config.n() {
            return Err(SecAggError::UnknownClient {
                stage: Stage::AdvertiseKeys,
                id,
                n: config.n(),
            });
        }
        let mut secrets = ClientSecrets {
            c_sk: [0; 32],
            s_sk: [0; 32],
            b: [0; 32],
        };
        rng.fill_bytes(&mut secrets.c_sk);
        rng.fill_bytes(&mut secrets.s_sk);
        let c_pk = crypto::public_key(&secrets.c_sk);
        let s_pk = crypto::public_key(&secrets.s_sk);
        Ok(SecAggClient {
            graph: NeighbourGraph::new(&round_seed, config.n(), config.k()),
            config: config.clone(),
            id,
            round_seed,
            state: StageState::Open(Stage::AdvertiseKeys),
            secrets,
            c_pk,
            s_pk,
            neighbours_u1: BTreeMap::new(),
            neighbours_u2: Vec::new(),
            held: BTreeMap::new(),
        })
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The round's neighbourhood graph.
    pub fn graph(&self) -> &NeighbourGraph {
        &self.graph
    }

    fn enter(&mut self, stage: Stage) -> SecAggResult<()> {
        self.state.require_open(stage)?;
        // Pessimistic: a refused message leaves the client failed.
        self.state = StageState::Failed;
        Ok(())
    }

    /// Stage 0: the public keys to advertise.
    pub fn advertise_keys(&mut self) -> SecAggResult<AdvertiseKeys> {
        self.enter(Stage::AdvertiseKeys)?;
        self.state = StageState::Open(Stage::ShareKeys);
        Ok(AdvertiseKeys {
            id: self.id,
            c_pk: self.c_pk,
            s_pk: self.s_pk,
        })
    }

    /// Stage 1: takes the neighbours' keys the server forwarded (the client's neighbours in
    /// `U1`), draws the self-mask seed `b_u`, Shamir-shares `b_u` and `s_sk_u` among those
    /// neighbours and itself, and returns the encrypted shares. Refuses a non-neighbour, a
    /// duplicate, or fewer than `t - 1` neighbours.
    pub fn share_keys<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        keys: &NeighbourKeys,
        rng: &mut R,
    ) -> SecAggResult<ShareKeys> {
        self.enter(Stage::ShareKeys)?;
        let stage = Stage::ShareKeys;
        for k in &keys.neighbours {
            if !self.graph.are_neighbours(self.id, k.id) {
                return Err(SecAggError::NotNeighbour {
                    stage,
                    from: self.id,
                    to: k.id,
                });
            }
            if self.neighbours_u1.insert(k.id, (k.c_pk, k.s_pk)).is_some() {
                return Err(SecAggError::Duplicate { stage, id: k.id });
            }
        }
        let holders = self.neighbours_u1.len() as u32 + 1;
        if holders < self.config.t() {
            return Err(SecAggError::TooFewHolders {
                stage: Stage::AdvertiseKeys,
                client: self.id,
                needed: self.config.t(),
                got: holders,
            });
        }
        rng.fill_bytes(&mut self.secrets.b);
        // Holders: the neighbours in U1 (sorted) and this client.
        let mut ids: Vec<ClientId> = self.neighbours_u1.keys().copied().collect();
        ids.push(self.id);
        let xs: Vec<u64> = ids.iter().map(|&v| u64::from(v) + 1).collect();
        let t = self.config.t() as usize;
        let mut b_shares = shamir::split(&self.secrets.b, t, &xs, rng);
        let mut sk_shares = shamir::split(&self.secrets.s_sk, t, &xs, rng);
        let mut out = Vec::with_capacity(ids.len() - 1);
        for (i, &v) in ids.iter().enumerate() {
            if v == self.id {
                self.held.insert(
                    v,
                    HeldShares {
                        b: b_shares[i],
                        s_sk: sk_shares[i],
                    },
                );
                continue;
            }
            let (c_pk, _) = self.neighbours_u1[&v];
            let shared = crypto::agree(&self.secrets.c_sk, &c_pk)
                .ok_or(SecAggError::LowOrderKey { peer: v })?;
            let mut plain = zeroize::Zeroizing::new([0u8; SHARE_PLAINTEXT_LEN]);
            for (j, e) in b_shares[i].iter().chain(&sk_shares[i]).enumerate() {
                plain[8 * j..8 * j + 8].copy_from_slice(&e.to_le_bytes());
            }
            let ct = crypto::encrypt_share(&shared, &self.round_seed, self.id, v, &plain[..]);
            out.push(EncryptedShare {
                peer: v,
                ciphertext: ct.try_into().expect("ciphertext length is fixed"),
            });
        }
        b_shares.zeroize();
        sk_shares.zeroize();
        self.state = StageState::Open(Stage::MaskedInput);
        Ok(ShareKeys {
            id: self.id,
            shares: out,
        })
    }

    /// Stage 2: takes the shares the server forwarded (their senders are the client's view
    /// of `U2`), decrypts and keeps them, and returns the masked input
    /// `w q(x) + PRG(b_u) + sum_{v in U2, v nbr} sign(u,v) PRG(s_uv)` mod `2^b`.
    /// `weight` must be `Some` exactly when the configuration is weighted.
    pub fn masked_input(
        &mut self,
        shares: &IncomingShares,
        input: &[f64],
        weight: Option<u64>,
    ) -> SecAggResult<MaskedInput> {
        self.state.require_open(Stage::MaskedInput)?;
        // A caller's mistake in the input does not end the round for this client.
        let mut y = self.config.quantize(input, weight)?;
        self.enter(Stage::MaskedInput)?;
        let stage = Stage::ShareKeys;
        let mut u2 = Vec::with_capacity(shares.shares.len());
        for s in &shares.shares {
            let v = s.peer;
            let Some(&(c_pk, _)) = self.neighbours_u1.get(&v) else {
                return Err(SecAggError::NotNeighbour {
                    stage,
                    from: v,
                    to: self.id,
                });
            };
            if self.held.contains_key(&v) {
                return Err(SecAggError::Duplicate { stage, id: v });
            }
            let shared = crypto::agree(&self.secrets.c_sk, &c_pk)
                .ok_or(SecAggError::LowOrderKey { peer: v })?;
            let plain = crypto::decrypt_share(&shared, &self.round_seed, v, self.id, &s.ciphertext)
                .filter(|p| p.len() == SHARE_PLAINTEXT_LEN)
                .ok_or(SecAggError::DecryptionFailed {
                    from: v,
                    to: self.id,
                })?;
            let mut held = HeldShares {
                b: [0; CHUNKS],
                s_sk: [0; CHUNKS],
            };
            for j in 0..2 * CHUNKS {
                let e = u64::from_le_bytes(plain[8 * j..8 * j + 8].try_into().expect("8"));
                if e >= shamir::P {
                    return Err(SecAggError::DecryptionFailed {
                        from: v,
                        to: self.id,
                    });
                }
                if j < CHUNKS {
                    held.b[j] = e;
                } else {
                    held.s_sk[j - CHUNKS] = e;
                }
            }
            self.held.insert(v, held);
            u2.push(v);
        }
        u2.sort_unstable();
        let have = u2.len() as u32 + 1;
        if have < self.config.t() {
            return Err(SecAggError::TooFewHolders {
                stage,
                client: self.id,
                needed: self.config.t(),
                got: have,
            });
        }
        let mask = self.config.modulus_mask();
        crypto::apply_mask(&mut y, &self.secrets.b, false, mask);
        for &v in &u2 {
            let (_, s_pk) = self.neighbours_u1[&v];
            let shared = crypto::agree(&self.secrets.s_sk, &s_pk)
                .ok_or(SecAggError::LowOrderKey { peer: v })?;
            let seed = crypto::pairwise_seed(&shared, &self.round_seed, self.id, v);
            // sign(u, v) = +1 if u < v, -1 otherwise.
            crypto::apply_mask(&mut y, &seed, self.id > v, mask);
        }
        self.neighbours_u2 = u2;
        self.state = StageState::Open(Stage::Unmask);
        Ok(MaskedInput {
            id: self.id,
            masked: y,
        })
    }

    /// Stage 3: answers an unmask request with the share of `b_v` for each listed survivor
    /// and of `s_sk_v` for each listed dropped client. Refuses (and reveals nothing) if a
    /// client is listed twice or in both lists, if a listed client is neither this client
    /// nor a neighbour whose shares it received, or if this client is listed as dropped.
    pub fn unmask(&mut self, request: &UnmaskRequest) -> SecAggResult<UnmaskResponse> {
        self.enter(Stage::Unmask)?;
        let stage = Stage::Unmask;
        let mut seen = std::collections::BTreeSet::new();
        for &v in request.survivors.iter().chain(&request.dropped) {
            if !seen.insert(v) {
                return Err(
                    if request.survivors.contains(&v) && request.dropped.contains(&v) {
                        SecAggError::BothSharesRequested { client: v }
                    } else {
                        SecAggError::Duplicate { stage, id: v }
                    },
                );
            }
            if v != self.id && self.neighbours_u2.binary_search(&v).is_err() {
                return Err(SecAggError::NotNeighbour {
                    stage,
                    from: self.id,
                    to: v,
                });
            }
        }
        if request.dropped.contains(&self.id) {
            return Err(SecAggError::SelfListedAsDropped { client: self.id });
        }
        let mut shares = Vec::with_capacity(seen.len());
        for &v in &request.survivors {
            shares.push(RevealedShare {
                owner: v,
                kind: ShareKind::SelfMask,
                share: self.held[&v].b,
            });
        }
        for &v in &request.dropped {
            shares.push(RevealedShare {
                owner: v,
                kind: ShareKind::MaskKey,
                share: self.held[&v].s_sk,
            });
        }
        self.state = StageState::Finished;
        Ok(UnmaskResponse {
            id: self.id,
            shares,
        })
    }
}
