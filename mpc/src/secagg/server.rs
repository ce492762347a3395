//! The server of a secure-aggregation round: collects each stage's messages, closes the
//! stage, and routes what each client needs next; finally reconstructs the masks and
//! outputs the sum of the survivors' inputs.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroize;

use super::config::SecAggConfig;
use super::crypto;
use super::error::{MalformedReason, SecAggError, SecAggResult, StageState};
use super::graph::NeighbourGraph;
use super::messages::{
    AdvertiseKeys, EncryptedShare, IncomingShares, MaskedInput, NeighbourKey, NeighbourKeys,
    ShareKeys, ShareKind, UnmaskRequest, UnmaskResponse,
};
use super::shamir::{self, ShareValue};
use super::{ClientId, Stage};

/// The result of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateOutput {
    /// `sum_{u in U3} w_u q(x_u)` mod `2^b` (`vector_len` entries; the last is `sum w_u`
    /// when weighted).
    pub sum: Vec<u64>,
    /// The clients whose inputs are in the sum (`U3`), sorted.
    pub survivors: Vec<ClientId>,
    /// `sum w_u` when weighted, else the number of survivors.
    pub weight_total: u64,
    /// The de-quantized sum `sum w_u x_u` (`dim` entries), see
    /// [`SecAggConfig::dequantize_sum`].
    pub dequantized: Vec<f64>,
}

/// The server of one round. `&mut self` methods: not for sharing between threads without
/// a lock; `Send`.
///
/// For each stage, call `receive_*` once per client message (`from` = the authenticated
/// sender) and then `finish_*`. A refused message (typed error) changes nothing and the
/// round goes on; a failed `finish_*` ends the round (every later call is refused) and
/// reveals nothing.
pub struct SecAggServer {
    config: SecAggConfig,
    round_seed: [u8; 32],
    graph: NeighbourGraph,
    state: StageState,
    /// U1: advertised keys.
    keys: BTreeMap<ClientId, ([u8; 32], [u8; 32])>,
    /// Encrypted shares received in ShareKeys.
    shares: BTreeMap<ClientId, Vec<EncryptedShare>>,
    in_u2: Vec<bool>,
    in_u3: Vec<bool>,
    sum: Vec<u64>,
    requests: BTreeMap<ClientId, UnmaskRequest>,
    responded: BTreeSet<ClientId>,
    b_shares: BTreeMap<ClientId, Vec<(u64, ShareValue)>>,
    sk_shares: BTreeMap<ClientId, Vec<(u64, ShareValue)>>,
}

impl std::fmt::Debug for SecAggServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecAggServer")
            .field("state", &self.state)
            .field("u1", &self.keys.len())
            .field("u3", &self.u3_len())
            .finish_non_exhaustive()
    }
}

impl Drop for SecAggServer {
    fn drop(&mut self) {
        self.wipe_shares();
    }
}

impl SecAggServer {
    /// The server of the round with public seed `round_seed` (which it sends to clients).
    pub fn new(config: &SecAggConfig, round_seed: [u8; 32]) -> Self {
        let n = config.n() as usize;
        SecAggServer {
            graph: NeighbourGraph::new(&round_seed, config.n(), config.k()),
            config: config.clone(),
            round_seed,
            state: StageState::Open(Stage::AdvertiseKeys),
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            in_u2: vec![false; n],
            in_u3: vec![false; n],
            sum: Vec::new(),
            requests: BTreeMap::new(),
            responded: BTreeSet::new(),
            b_shares: BTreeMap::new(),
            sk_shares: BTreeMap::new(),
        }
    }

    /// The round's neighbourhood graph.
    pub fn graph(&self) -> &NeighbourGraph {
        &self.graph
    }

    /// Where the server is.
    pub fn state(&self) -> StageState {
        self.state
    }

    fn wipe_shares(&mut self) {
        for list in self
            .b_shares
            .values_mut()
            .chain(self.sk_shares.values_mut())
        {
            for (_, v) in list.iter_mut() {
                v.zeroize();
            }
        }
        self.b_shares.clear();
        self.sk_shares.clear();
    }

    fn fail(&mut self, e: SecAggError) -> SecAggError {
        self.state = StageState::Failed;
        self.sum.zeroize();
        self.wipe_shares();
        e
    }

    /// The start of `finish_*`: refuses (changing nothing) unless `stage` is open, then
    /// fails the round if `got < t` clients are left. Returns `t`.
    fn close(&mut self, stage: Stage, got: u32) -> SecAggResult<u32> {
        self.state.require_open(stage)?;
        let t = self.config.t();
        if got < t {
            return Err(self.fail(SecAggError::TooFewSurvivors {
                stage,
                needed: t,
                got,
            }));
        }
        Ok(t)
    }

    /// Fails the round: `client`'s secrets have `got < t` holders left at `stage`.
    fn too_few_holders(&mut self, stage: Stage, client: ClientId, got: u32) -> SecAggError {
        let needed = self.config.t();
        self.fail(SecAggError::TooFewHolders {
            stage,
            client,
            needed,
            got,
        })
    }

    /// Checks the stage, the sender's id and the id inside the message.
    fn check(&self, stage: Stage, from: ClientId, claimed: ClientId) -> SecAggResult<()> {
        self.state.require_open(stage)?;
        if from >= self.config.n() {
            return Err(SecAggError::UnknownClient {
                stage,
                id: from,
                n: self.config.n(),
            });
        }
        if claimed != from {
            return Err(SecAggError::WrongSender {
                stage,
                from,
                claimed,
            });
        }
        Ok(())
    }

    fn in_u1(&self, u: ClientId) -> bool {
        self.keys.contains_key(&u)
    }

    /// `|U3|`: the clients whose masked input arrived.
    fn u3_len(&self) -> u32 {
        self.in_u3.iter().filter(|&&b| b).count() as u32
    }

    /// Stage 0: a client's public keys.
    pub fn receive_advertise(&mut self, from: ClientId, msg: &AdvertiseKeys) -> SecAggResult<()> {
        let stage = Stage::AdvertiseKeys;
        self.check(stage, from, msg.id)?;
        if self.keys.contains_key(&from) {
            return Err(SecAggError::Duplicate { stage, id: from });
        }
        self.keys.insert(from, (msg.c_pk, msg.s_pk));
        Ok(())
    }

    /// Closes stage 0 (`U1` = the clients that advertised): returns, for each of them, its
    /// neighbours' keys. Fails if `|U1| < t` or a client has fewer than `t` holders in `U1`.
    pub fn finish_advertise(&mut self) -> SecAggResult<BTreeMap<ClientId, NeighbourKeys>> {
        let stage = Stage::AdvertiseKeys;
        let t = self.close(stage, self.keys.len() as u32)?;
        let mut out = BTreeMap::new();
        for &u in self.keys.keys() {
            let neighbours: Vec<NeighbourKey> = self
                .graph
                .neighbours(u)
                .into_iter()
                .filter_map(|v| {
                    self.keys
                        .get(&v)
                        .map(|&(c_pk, s_pk)| NeighbourKey { id: v, c_pk, s_pk })
                })
                .collect();
            let holders = neighbours.len() as u32 + 1;
            if holders < t {
                return Err(self.too_few_holders(stage, u, holders));
            }
            out.insert(u, NeighbourKeys { neighbours });
        }
        self.state = StageState::Open(Stage::ShareKeys);
        Ok(out)
    }

    /// Stage 1: a client's encrypted shares. Refuses a sender not in `U1`, a duplicate, a
    /// share addressed to a non-neighbour or to a client not in `U1`, two shares for one
    /// recipient, or a missing recipient.
    pub fn receive_share_keys(&mut self, from: ClientId, msg: ShareKeys) -> SecAggResult<()> {
        let stage = Stage::ShareKeys;
        self.check(stage, from, msg.id)?;
        if !self.in_u1(from) {
            return Err(SecAggError::NotParticipant { stage, id: from });
        }
        if self.shares.contains_key(&from) {
            return Err(SecAggError::Duplicate { stage, id: from });
        }
        let mut seen = BTreeSet::new();
        for s in &msg.shares {
            if !self.graph.are_neighbours(from, s.peer) || !self.in_u1(s.peer) {
                return Err(SecAggError::NotNeighbour {
                    stage,
                    from,
                    to: s.peer,
                });
            }
            if !seen.insert(s.peer) {
                return Err(SecAggError::Duplicate { stage, id: s.peer });
            }
        }
        let expected = self
            .graph
            .neighbours(from)
            .into_iter()
            .filter(|v| self.in_u1(*v))
            .count();
        if msg.shares.len() != expected {
            return Err(SecAggError::IncompleteMessage {
                stage,
                from,
                expected,
                got: msg.shares.len(),
            });
        }
        self.shares.insert(from, msg.shares);
        Ok(())
    }

    /// Closes stage 1 (`U2` = the clients whose shares arrived): returns, for each of them,
    /// the shares its neighbours in `U2` addressed to it. Fails if `|U2| < t` or a client
    /// of `U2` has fewer than `t` holders in `U2`.
    pub fn finish_share_keys(&mut self) -> SecAggResult<BTreeMap<ClientId, IncomingShares>> {
        let stage = Stage::ShareKeys;
        let t = self.close(stage, self.shares.len() as u32)?;
        for &u in self.shares.keys() {
            self.in_u2[u as usize] = true;
        }
        let mut out: BTreeMap<ClientId, IncomingShares> = self
            .shares
            .keys()
            .map(|&u| (u, IncomingShares::default()))
            .collect();
        let shares = std::mem::take(&mut self.shares);
        for (&v, list) in &shares {
            for s in list {
                if let Some(dst) = out.get_mut(&s.peer) {
                    dst.shares.push(EncryptedShare {
                        peer: v,
                        ciphertext: s.ciphertext,
                    });
                }
            }
        }
        for (&u, inc) in &out {
            let holders = inc.shares.len() as u32 + 1;
            if holders < t {
                return Err(self.too_few_holders(stage, u, holders));
            }
        }
        self.sum = vec![0; self.config.vector_len()];
        self.state = StageState::Open(Stage::MaskedInput);
        Ok(out)
    }

    /// Stage 2: a client's masked input, added to the running sum. Refuses a sender not in
    /// `U2`, a replay, a wrong length or an entry `>= 2^b`.
    pub fn receive_masked_input(&mut self, from: ClientId, msg: &MaskedInput) -> SecAggResult<()> {
        let stage = Stage::MaskedInput;
        self.check(stage, from, msg.id)?;
        if !self.in_u2[from as usize] {
            return Err(SecAggError::NotParticipant { stage, id: from });
        }
        if self.in_u3[from as usize] {
            return Err(SecAggError::Duplicate { stage, id: from });
        }
        if msg.masked.len() != self.sum.len() {
            return Err(SecAggError::Malformed {
                message: "MaskedInput",
                reason: MalformedReason::WrongLength {
                    expected: self.sum.len() as u64,
                    got: msg.masked.len() as u64,
                },
            });
        }
        let mask = self.config.modulus_mask();
        if let Some((index, &value)) = msg.masked.iter().enumerate().find(|(_, &x)| x & !mask != 0)
        {
            return Err(SecAggError::EntryOutOfRange {
                index,
                value,
                modulus_bits: self.config.modulus_bits(),
            });
        }
        for (s, &y) in self.sum.iter_mut().zip(&msg.masked) {
            *s = s.wrapping_add(y) & mask;
        }
        self.in_u3[from as usize] = true;
        Ok(())
    }

    /// Closes stage 2 (`U3` = the clients whose masked input arrived, `D = U2 \ U3`):
    /// returns, for each client of `U3`, the request for the `b_v` shares of its
    /// neighbours in `U3` (and itself) and the `s_sk_v` shares of its neighbours in `D`.
    /// Fails if `|U3| < t` or a secret to recover has fewer than `t` holders in `U3`.
    pub fn finish_masked_input(&mut self) -> SecAggResult<BTreeMap<ClientId, UnmaskRequest>> {
        let stage = Stage::MaskedInput;
        let t = self.close(stage, self.u3_len())?;
        let mut out = BTreeMap::new();
        for v in 0..self.config.n() {
            if !self.in_u2[v as usize] {
                continue;
            }
            let nb = self.graph.neighbours(v);
            let alive = nb.iter().filter(|&&w| self.in_u3[w as usize]).count() as u32;
            if self.in_u3[v as usize] {
                let holders = alive + 1;
                if holders < t {
                    return Err(self.too_few_holders(stage, v, holders));
                }
                let mut survivors = Vec::new();
                let mut dropped = Vec::new();
                for &w in nb.iter().chain(std::iter::once(&v)) {
                    if self.in_u3[w as usize] {
                        survivors.push(w);
                    } else if self.in_u2[w as usize] {
                        dropped.push(w);
                    }
                }
                survivors.sort_unstable();
                out.insert(v, UnmaskRequest { survivors, dropped });
            } else if alive > 0 && alive < t {
                // A dropped client with surviving neighbours: its mask key must be recovered.
                return Err(self.too_few_holders(stage, v, alive));
            }
        }
        self.requests = out.clone();
        self.state = StageState::Open(Stage::Unmask);
        Ok(out)
    }

    /// Stage 3: a client's revealed shares. Refuses a sender not in `U3`, a replay, and a
    /// response that is not exactly what was requested of it.
    pub fn receive_unmask(&mut self, from: ClientId, msg: UnmaskResponse) -> SecAggResult<()> {
        let stage = Stage::Unmask;
        self.check(stage, from, msg.id)?;
        let Some(req) = self.requests.get(&from) else {
            return Err(SecAggError::NotParticipant { stage, id: from });
        };
        if self.responded.contains(&from) {
            return Err(SecAggError::Duplicate { stage, id: from });
        }
        let expected = req.survivors.len() + req.dropped.len();
        if msg.shares.len() != expected {
            return Err(SecAggError::IncompleteMessage {
                stage,
                from,
                expected,
                got: msg.shares.len(),
            });
        }
        let mut seen = BTreeSet::new();
        for s in &msg.shares {
            let list = match s.kind {
                ShareKind::SelfMask => &req.survivors,
                ShareKind::MaskKey => &req.dropped,
            };
            if list.binary_search(&s.owner).is_err() || !seen.insert(s.owner) {
                return Err(SecAggError::UnexpectedShare {
                    stage,
                    from,
                    owner: s.owner,
                    kind: s.kind,
                });
            }
            if s.share.iter().any(|&e| e >= shamir::P) {
                return Err(SecAggError::Malformed {
                    message: "UnmaskResponse",
                    reason: MalformedReason::ValueOutOfRange {
                        value: s.share.iter().copied().max().unwrap_or(0),
                    },
                });
            }
        }
        let x = u64::from(from) + 1;
        for s in msg.shares {
            let map = match s.kind {
                ShareKind::SelfMask => &mut self.b_shares,
                ShareKind::MaskKey => &mut self.sk_shares,
            };
            map.entry(s.owner).or_default().push((x, s.share));
        }
        self.responded.insert(from);
        Ok(())
    }

    /// Closes stage 3: reconstructs `b_v` for every `v in U3` and `s_sk_v` for every
    /// `v in D` with surviving neighbours (from `t` shares each), removes the self masks
    /// and the dropped clients' pairwise masks, and returns the sum. Fails (revealing
    /// nothing) if fewer than `t` clients responded or a secret has fewer than `t` shares.
    pub fn finish_unmask(&mut self) -> SecAggResult<AggregateOutput> {
        let stage = Stage::Unmask;
        let t = self.close(stage, self.responded.len() as u32)?;
        let n = self.config.n();
        let survivors: Vec<ClientId> = (0..n).filter(|&v| self.in_u3[v as usize]).collect();
        let dropped: Vec<ClientId> = (0..n)
            .filter(|&v| {
                self.in_u2[v as usize]
                    && !self.in_u3[v as usize]
                    && self
                        .graph
                        .neighbours(v)
                        .iter()
                        .any(|&w| self.in_u3[w as usize])
            })
            .collect();
        for (&v, map) in survivors
            .iter()
            .map(|v| (v, &self.b_shares))
            .chain(dropped.iter().map(|v| (v, &self.sk_shares)))
        {
            let have = map.get(&v).map_or(0, |l| l.len()) as u32;
            if have < t {
                return Err(self.too_few_holders(stage, v, have));
            }
        }
        let mask = self.config.modulus_mask();
        // Zeroized if a reconstruction fails below (the sum is then partly unmasked).
        let mut sum = zeroize::Zeroizing::new(std::mem::take(&mut self.sum));
        for &v in &survivors {
            let pts = &self.b_shares[&v][..t as usize];
            let Some(b) = shamir::reconstruct(pts).map(zeroize::Zeroizing::new) else {
                return Err(self.fail(SecAggError::ReconstructionFailed { client: v }));
            };
            crypto::apply_mask(&mut sum, &b, true, mask);
        }
        for &v in &dropped {
            let pts = &self.sk_shares[&v][..t as usize];
            let Some(sk) = shamir::reconstruct(pts).map(zeroize::Zeroizing::new) else {
                return Err(self.fail(SecAggError::ReconstructionFailed { client: v }));
            };
            if crypto::public_key(&sk) != self.keys[&v].1 {
                return Err(self.fail(SecAggError::ReconstructionFailed { client: v }));
            }
            for u in self.graph.neighbours(v) {
                if !self.in_u3[u as usize] {
                    continue;
                }
                let Some(shared) = crypto::agree(&sk, &self.keys[&u].1) else {
                    return Err(self.fail(SecAggError::LowOrderKey { peer: u }));
                };
                let seed = crypto::pairwise_seed(&shared, &self.round_seed, u, v);
                // u added sign(u, v) PRG(s_uv): +1 if u < v. Remove it.
                crypto::apply_mask(&mut sum, &seed, u < v, mask);
            }
        }
        self.wipe_shares();
        self.state = StageState::Finished;
        let weight_total = if self.config.weighted() {
            sum[self.config.dim()]
        } else {
            survivors.len() as u64
        };
        let dequantized = self.config.dequantize_sum(&sum, weight_total);
        Ok(AggregateOutput {
            sum: std::mem::take(&mut *sum),
            survivors,
            weight_total,
            dequantized,
        })
    }
}
