//! The server's cache of clients' evaluation keys, shared by every session: a client that
//! keeps its keys (see [`crate::client::ClientOptions::key_dir`]) uploads them once per
//! model, and its later sessions name them by [`KeyId`] in their hello instead.
//!
//! A [`KeyId`] is a SHA-256 hash of the uploaded key bytes, computed by the server from the
//! bytes it received and checked (decoded against the model's parameters, Galois elements
//! compared) before anything is cached. An entry therefore holds exactly the keys whose
//! bytes hash to its id: a client that announces an id without having uploaded the bytes
//! finds either nothing (a miss) or the keys with those very bytes, never other keys, and
//! no upload can replace an entry by different keys. Keys are public evaluation material:
//! two clients with the same bytes share one entry. What an id does reveal is linkability:
//! the server (and, without TLS, an observer) can tell that two sessions announcing the
//! same id belong to the same key holder.
//!
//! The cache is bounded by a number of entries and by the memory its keys take decoded
//! (the polynomials' words, [`CachedKeys::size_bytes`]); the least recently used entries go
//! first. An entry larger than the whole byte bound is not cached. Sessions hold their keys
//! by `Arc`, so an eviction never disturbs a session in flight. Thread-safe (`Send + Sync`,
//! a mutex inside); share it by `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cipherml_he::bfv::BfvParameters;
use cipherml_he::rlwe::{PublicKey, RlweContext};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separation of every key id.
const ID_DOMAIN: &[u8] = b"cipherml key id v1\0";

/// The id of a set of uploaded keys: SHA-256 of their wire bytes, with a domain tag and the
/// kind of key. Both sides compute it from the same bytes; the server trusts only its own.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The id of CKKS evaluation keys: the public key, the relinearization key and the
    /// Galois keys, as uploaded.
    pub fn ckks(pk: &[u8], rlk: &[u8], galois: &[u8]) -> Self {
        Self::of(1, &[pk, rlk, galois])
    }

    /// The id of a BFV public key (hybrid mode), as uploaded.
    pub fn bfv(pk: &[u8]) -> Self {
        Self::of(2, &[pk])
    }

    fn of(kind: u8, parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        h.update(ID_DOMAIN);
        h.update([kind]);
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Self(h.finalize().into())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::fmt::Display for KeyId {
    /// The first 8 bytes in hex (enough to tell ids apart in a log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A client's CKKS evaluation keys for one parameter set and set of Galois elements,
/// decoded and checked: the engine's [`crate::tensor::CkksEvalKeys`], which a server's
/// CKKS evaluation ([`crate::tensor::CkksEval::with_keys`]) uses as they are.
pub use crate::tensor::CkksEvalKeys as CkksKeys;

/// A client's BFV public key (hybrid mode), decoded and checked.
pub struct BfvKey {
    pub(crate) pk: PublicKey,
    /// The id of the BFV parameters it was decoded for.
    pub(crate) params_id: u64,
}

// Keys are public material: `Debug` shows their shape only.
impl std::fmt::Debug for BfvKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BfvKey")
            .field("params_id", &format_args!("{:016x}", self.params_id))
            .finish_non_exhaustive()
    }
}

/// What the cache holds: one client's decoded keys.
#[derive(Debug, Clone)]
pub enum CachedKeys {
    /// CKKS evaluation keys, with the id of the parameters they were decoded for and their
    /// Galois elements (a session may use them for any model with the same two).
    Ckks {
        /// The keys.
        keys: Arc<CkksKeys>,
        /// Id of the CKKS parameters.
        params_id: u64,
        /// Memory the keys take, in bytes.
        size: usize,
    },
    /// A BFV public key.
    Bfv {
        /// The key.
        key: Arc<BfvKey>,
        /// Memory the key takes, in bytes.
        size: usize,
    },
}

impl CachedKeys {
    /// Wraps CKKS keys decoded against `ctx` (the context of parameters `params_id`).
    pub(crate) fn ckks(keys: Arc<CkksKeys>, ctx: &RlweContext, params_id: u64) -> Self {
        let galois = keys.galois.elements().count();
        Self::Ckks {
            size: public_key_bytes(ctx) + (1 + galois) * switch_key_bytes(ctx),
            keys,
            params_id,
        }
    }

    /// Wraps a BFV public key decoded against `ctx`.
    pub(crate) fn bfv(key: Arc<BfvKey>, ctx: &RlweContext) -> Self {
        Self::Bfv {
            size: public_key_bytes(ctx),
            key,
        }
    }

    /// Decodes an uploaded BFV public key (untrusted bytes) for `params`, and computes its
    /// id from the same bytes.
    pub fn bfv_from_bytes(
        params: &BfvParameters,
        bytes: &[u8],
    ) -> Result<(KeyId, Self), cipherml_he::Error> {
        let pk = PublicKey::from_bytes(params.context(), bytes)?;
        let key = Arc::new(BfvKey {
            pk,
            params_id: params.id(),
        });
        Ok((KeyId::bfv(bytes), Self::bfv(key, params.context())))
    }

    /// Memory the decoded keys take (their polynomials' 64-bit words).
    pub fn size_bytes(&self) -> usize {
        match self {
            Self::Ckks { size, .. } | Self::Bfv { size, .. } => *size,
        }
    }
}

/// Memory of a public key: two polynomials over `Q`.
fn public_key_bytes(ctx: &RlweContext) -> usize {
    2 * ctx.degree() * ctx.q().len() * 8
}

/// Memory of one key-switching key: two polynomials over `QP` per digit.
fn switch_key_bytes(ctx: &RlweContext) -> usize {
    2 * ctx.num_digits() * ctx.degree() * ctx.qp().len() * 8
}

/// Counters of a [`KeyCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCacheStats {
    /// Entries held.
    pub entries: usize,
    /// Memory they take, in bytes.
    pub bytes: usize,
    /// Lookups that found their id.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries added.
    pub insertions: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
}

struct Entry {
    keys: CachedKeys,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<KeyId, Entry>,
    clock: u64,
    stats: KeyCacheStats,
}

/// The server's bounded LRU cache of evaluation keys, keyed by [`KeyId`] (see the module
/// documentation for why an id cannot be used to reach another client's keys).
pub struct KeyCache {
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for KeyCache {
    /// 256 entries and 512 MiB (about 25 key sets of a CKKS model at `N = 8192`).
    fn default() -> Self {
        Self::new(256, 512 << 20)
    }
}

impl KeyCache {
    /// A cache of at most `max_entries` entries taking at most `max_bytes` bytes (0 for
    /// either disables caching).
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while the lock was held leaves the map consistent (every
        // update is one insert or remove): keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The keys cached under `id`, marked as just used; `None` for an id nobody uploaded
    /// (or that was evicted).
    pub fn get(&self, id: &KeyId) -> Option<CachedKeys> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        match inner.map.get_mut(id) {
            Some(e) => {
                e.last_used = now;
                let keys = e.keys.clone();
                inner.stats.hits += 1;
                Some(keys)
            }
            None => {
                inner.stats.misses += 1;
                None
            }
        }
    }

    /// Caches `keys` under `id`, which the caller computed from the bytes it decoded them
    /// from ([`KeyId::ckks`], [`KeyId::bfv`]): evicts the least recently used entries
    /// until both bounds hold. Returns whether the keys are cached (not if they alone
    /// exceed the byte bound). An id already present keeps its entry (same bytes, same
    /// keys) and is marked as used.
    pub fn insert(&self, id: KeyId, keys: CachedKeys) -> bool {
        let size = keys.size_bytes();
        if self.max_entries == 0 || size > self.max_bytes {
            return false;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if let Some(e) = inner.map.get_mut(&id) {
            e.last_used = now;
            return true;
        }
        while inner.map.len() >= self.max_entries || inner.stats.bytes + size > self.max_bytes {
            let Some(oldest) = inner
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.stats.bytes -= e.keys.size_bytes();
                inner.stats.evictions += 1;
            }
        }
        inner.map.insert(
            id,
            Entry {
                keys,
                last_used: now,
            },
        );
        inner.stats.bytes += size;
        inner.stats.insertions += 1;
        inner.stats.entries = inner.map.len();
        true
    }

    /// Memory the cached keys take, in bytes (at most the byte bound).
    pub fn size_bytes(&self) -> usize {
        self.lock().stats.bytes
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is cached (does not count as a use).
    pub fn contains(&self, id: &KeyId) -> bool {
        self.lock().map.contains_key(id)
    }

    /// The bounds: (entries, bytes).
    pub fn bounds(&self) -> (usize, usize) {
        (self.max_entries, self.max_bytes)
    }

    /// The counters.
    pub fn stats(&self) -> KeyCacheStats {
        let inner = self.lock();
        KeyCacheStats {
            entries: inner.map.len(),
            ..inner.stats
        }
    }
}
