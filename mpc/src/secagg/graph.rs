//! The round's neighbourhood graph, computed identically by every party from
//! `(round seed, n, k)`.
//!
//! Construction: a permutation of `0..n` is drawn by Fisher-Yates with ChaCha20 seeded by
//! `SHA-256("cipherml/secagg/v1/graph" || seed || n || k)` (uniform indices by rejection
//! sampling, so the result does not depend on any library's sampling algorithm). The
//! clients sit on a ring in that order; each is connected to the `h = (k-1)/2` clients before
//! and the `h` after it. If `2h >= n - 1` the graph is complete (everyone is everyone's
//! neighbour); otherwise every client has exactly `k - 1` distinct neighbours, and with
//! itself `k` share holders. The relation is symmetric. Memory is `O(n)` (positions only).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use super::ClientId;

/// The neighbourhood graph of one round. Immutable, thread-safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourGraph {
    n: u32,
    half: u32,
    complete: bool,
    /// `ring[i]`: the client at position `i`.
    ring: Vec<ClientId>,
    /// `pos[u]`: the position of client `u`.
    pos: Vec<u32>,
}

fn below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = (u64::MAX / bound) * bound;
    loop {
        let r = rng.next_u64();
        if r < zone {
            return r % bound;
        }
    }
}

impl NeighbourGraph {
    /// The graph of `n` clients with neighbourhood parameter `k` (odd) for `seed`.
    pub fn new(seed: &[u8; 32], n: u32, k: u32) -> Self {
        let half = (k.saturating_sub(1)) / 2;
        let complete = u64::from(2 * half) >= u64::from(n.saturating_sub(1));
        let mut ring: Vec<ClientId> = (0..n).collect();
        let mut pos: Vec<u32> = (0..n).collect();
        if !complete {
            let mut h = Sha256::new();
            h.update(b"cipherml/secagg/v1/graph");
            h.update(seed);
            h.update(n.to_le_bytes());
            h.update(k.to_le_bytes());
            let mut rng = ChaCha20Rng::from_seed(h.finalize().into());
            for i in (1..n as usize).rev() {
                let j = below(&mut rng, i as u64 + 1) as usize;
                ring.swap(i, j);
            }
            for (i, &u) in ring.iter().enumerate() {
                pos[u as usize] = i as u32;
            }
        }
        NeighbourGraph {
            n,
            half,
            complete,
            ring,
            pos,
        }
    }

    /// Number of clients.
    pub fn n(&self) -> u32 {
        self.n
    }

    /// Whether everyone is everyone's neighbour.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether `u` and `v` (distinct, `< n`) are neighbours. `false` for `u == v` or ids
    /// out of range.
    pub fn are_neighbours(&self, u: ClientId, v: ClientId) -> bool {
        if u == v || u >= self.n || v >= self.n {
            return false;
        }
        if self.complete {
            return true;
        }
        let (pu, pv) = (self.pos[u as usize], self.pos[v as usize]);
        let d = pu.abs_diff(pv);
        d.min(self.n - d) <= self.half
    }

    /// The neighbours of `u` (itself excluded), sorted by id. Empty if `u >= n`.
    pub fn neighbours(&self, u: ClientId) -> Vec<ClientId> {
        if u >= self.n {
            return Vec::new();
        }
        let mut out: Vec<ClientId> = if self.complete {
            (0..self.n).filter(|&v| v != u).collect()
        } else {
            let p = i64::from(self.pos[u as usize]);
            let n = i64::from(self.n);
            (1..=i64::from(self.half))
                .flat_map(|j| [p - j, p + j])
                .map(|q| self.ring[q.rem_euclid(n) as usize])
                .collect()
        };
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_symmetric_and_deterministic() {
        let seed = [7u8; 32];
        for (n, k) in [(10u32, 5u32), (50, 13), (200, 17), (3, 5), (4, 3), (5, 5)] {
            let g = NeighbourGraph::new(&seed, n, k);
            assert_eq!(g, NeighbourGraph::new(&seed, n, k));
            let expect = (k - 1).min(n - 1) as usize;
            for u in 0..n {
                let nb = g.neighbours(u);
                assert_eq!(nb.len(), expect, "n={n} k={k} u={u}");
                assert!(!nb.contains(&u));
                for v in 0..n {
                    assert_eq!(nb.contains(&v), g.are_neighbours(u, v));
                    assert_eq!(g.are_neighbours(u, v), g.are_neighbours(v, u));
                }
            }
        }
        assert_ne!(
            NeighbourGraph::new(&[1; 32], 50, 5),
            NeighbourGraph::new(&[2; 32], 50, 5)
        );
    }
}
