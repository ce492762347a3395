//! The one value that configures a [`super::Session`]: network model, ring width and
//! fraction bits, flooding, the public cap on weights, the triple source and threads. The
//! plan a session prints ([`super::Session::explain`]) is made under this network model,
//! and it is the plan that runs.

use cipherml_he::bfv::{BfvParametersLiteral, PlaintextModulus};

use super::cost::NetworkModel;

/// Where Beaver triples (products on shares) come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Triples {
    /// From oblivious transfer between the two parties (dealer-free; the default).
    #[default]
    Ot,
    /// From BFV between the two parties (dealer-free; the client holds the key:
    /// `cipherml_mpc::triples::he`). Matrix triples still come from OT.
    He,
    /// From a dealer process (TF Encrypted's "crypto producer", `cipherml dealer`): a third
    /// party that colludes with neither, reached over TCP. The client draws a random
    /// session token and sends it to the server when the session starts; both present it
    /// to the dealer, which pairs their connections by it.
    Dealer {
        /// The dealer's address.
        addr: std::net::SocketAddr,
    },
}

/// How the engine truncates a product back to the session's fractional bits.
///
/// Neither mode ever wraps a value around the ring: the difference is the last place.
///
/// ```
/// use cipherml::tensor::{SessionConfig, Truncation};
/// let c = SessionConfig {
///     truncation: Truncation::WithinUlp,
///     ..SessionConfig::training()
/// };
/// assert_eq!(SessionConfig::training().truncation, Truncation::Exact);
/// assert_ne!(c, SessionConfig::training());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Truncation {
    /// Exactly `floor(x / 2^s)` (an arithmetic shift), every time: CrypTFlow2's faithful
    /// truncation. Non-negative values (a ReLU's output) and, in the training ring, values
    /// below `2^(l-2)` cost one `s`-bit millionaire, one B2A and one correlated OT; other
    /// values two millionaires.
    #[default]
    Exact,
    /// `floor(x / 2^s)` or one unit of `2^-f` less (Cheetah's truncation with a known most
    /// significant bit): one correlated OT per value, no millionaire, where the value is
    /// known non-negative or the ring has room (`l >= 2f + 32`, the training ring); exact
    /// elsewhere. Never a wrap-around: the error of each truncation is in `(-2^-f, 0]`
    /// beyond the floor, and a training run sees that as rounding. About half the
    /// comparisons of training.
    WithinUlp,
}

/// The configuration of a two-party session. Both parties must use the same one (the
/// server announces it; a client derives the same from the announcement).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// The network the cost model plans for (bandwidth, round-trip time).
    pub network: NetworkModel,
    /// Bits of the ring `Z_2^l` of the shares (also `log2 t` of BFV).
    pub ring_bits: u32,
    /// Fractional bits of the fixed-point encoding.
    pub frac_bits: u32,
    /// Statistical security of noise flooding over a whole session, in bits: the
    /// statistical distance of everything a client sees in a session from a simulation
    /// without the server's values is at most `2^-flood_bits`.
    pub flood_bits: u32,
    /// `log2` of the most coefficients of encrypted replies the session may reveal to the
    /// client: every flooding adds these bits (union bound), and the session refuses to
    /// reveal more ([`crate::Error::SessionExhausted`]). A server sets it from a model's
    /// coefficients per inference times its cap on inferences per session.
    pub reveal_log2: u32,
    /// The public cap on weights: every quantized weight `|round(w 2^f)|` is at most
    /// `2^weight_bits` (a larger weight is refused). The noise bounds, and so the
    /// flooding, are sized from it, never from the weights.
    pub weight_bits: u32,
    /// Where Beaver triples come from.
    pub triples: Triples,
    /// Bits of the BFV ciphertext modulus `Q` ([`SessionConfig::bfv_literal`]): 0 for the
    /// most any model this configuration allows may need
    /// ([`SessionConfig::q_bits_needed`]); a server fits it to the models it serves (the
    /// model layer's `PreparedModel::for_serving`: 147 bits for LeNet instead of 164, every
    /// upload 10% smaller, three primes instead of four) and announces it. At most
    /// [`MAX_Q_BITS`].
    pub q_bits: u32,
    /// Threads of this party's HE work: [`run_local_with`](super::run_local_with) runs
    /// each party in a rayon pool of this many threads ([`SessionConfig::thread_pool`]);
    /// a server runs its sessions in one pool of `ServerConfig::threads`; 0: rayon's
    /// global pool.
    pub threads: usize,
    /// How products are truncated ([`Truncation::Exact`] by default).
    pub truncation: Truncation,
}

impl Default for SessionConfig {
    /// A LAN, `l = 40`, `f = 12`, 40 bits of flooding over at most `2^32` revealed
    /// coefficients, weights `|w| <= 16` (`2^16` at 12 fractional bits), triples from OT,
    /// rayon's global pool.
    fn default() -> Self {
        Self {
            network: NetworkModel::lan(),
            ring_bits: 40,
            frac_bits: 12,
            flood_bits: 40,
            reveal_log2: 32,
            weight_bits: 16,
            triples: Triples::Ot,
            q_bits: 0,
            threads: 0,
            truncation: Truncation::Exact,
        }
    }
}

/// The most bits of the BFV modulus `Q` at N = 8192 with a 20-bit special prime
/// (`log2(QP) = 218`, 128-bit secure): [`SessionConfig::q_bits`] is clamped to it, and a
/// client refuses a server that announces more.
pub const MAX_Q_BITS: u32 = 198;

/// The most union bits (`log2` of the coefficients a session may reveal) that
/// [`SessionConfig::bfv_literal`] leaves room for: `2^40` coefficients.
pub const MAX_REVEAL_LOG2: u32 = 40;

impl SessionConfig {
    /// The configuration for training: a 64-bit ring with 16 fractional bits (products at
    /// `2^32` leave 31 bits of integer range, and every truncation is faithful, so no
    /// value wraps around), triples from OT, the BFV link at `t = 2^64`. Values a party
    /// holds whole and multiplies in the clear under BFV (its data) are capped at
    /// `2^14` in absolute value (`weight_bits = 30`: the flooding is sized from it).
    ///
    /// ```
    /// let c = cipherml::tensor::SessionConfig::training();
    /// assert_eq!((c.ring_bits, c.frac_bits), (64, 16));
    /// ```
    pub fn training() -> Self {
        Self {
            ring_bits: 64,
            frac_bits: 16,
            weight_bits: 30,
            ..Self::default()
        }
    }

    /// The BFV parameters: N = 8192, `t = 2^l` and a 20-bit special prime; `Q` of
    /// [`SessionConfig::q_bits`] bits, or by default the fewest bits that hold the
    /// plaintext modulus and the flooding of any reply this configuration allows
    /// ([`SessionConfig::q_bits_needed`]), up to 198 bits, in equal
    /// primes of at most 50 bits (the NTT's fast 52-bit path: three 55-bit primes were
    /// 10% slower than four of 41): the inference ring 164 bits (`log2(QP) = 184`), the
    /// training ring 198 (`log2(QP) = 218`), 128-bit secure either way. The link protocol
    /// uses no key switching (no evaluation key is ever made), so the special prime only
    /// completes the context. Public values only (the ring, the weight cap, the flooding's
    /// bits), so client and server derive the same parameters.
    ///
    /// ```
    /// use cipherml::tensor::SessionConfig;
    /// let q = |c: SessionConfig| c.bfv_literal().ciphertext_moduli_bits;
    /// assert_eq!(q(SessionConfig::default()), vec![41; 4]);
    /// assert_eq!(q(SessionConfig::training()), vec![50, 50, 49, 49]);
    /// assert_eq!(q(SessionConfig { q_bits: 144, ..SessionConfig::default() }), vec![48; 3]);
    /// ```
    pub fn bfv_literal(&self) -> BfvParametersLiteral {
        let needed = match self.q_bits {
            0 => self.q_bits_needed(),
            q => q.min(MAX_Q_BITS),
        };
        let ciphertext_moduli_bits = if needed < MAX_Q_BITS {
            let k = needed.div_ceil(50);
            vec![needed.div_ceil(k); k as usize]
        } else {
            vec![50, 50, 49, 49]
        };
        BfvParametersLiteral {
            plaintext: PlaintextModulus::PowerOfTwo {
                bits: self.ring_bits,
            },
            ciphertext_moduli_bits,
            special_moduli_bits: vec![20],
            ..BfvParametersLiteral::n8192()
        }
    }

    /// The bits of `Q` that a reply's decryption needs: `Q / (2t)` above the flooding of
    /// the noisiest product allowed, `2^6` products by weight polynomials of `N` terms at
    /// the weight cap (`(2^4.4 + 1/2) 2^(weight_bits + 13 + 6)`,
    /// [`cipherml_he::tensor::product_noise_log2`]),
    /// flooded by `flood_bits` plus up to [`MAX_REVEAL_LOG2`] union bits, with one bit of
    /// margin. A layer noisier than that is refused when it is prepared (the flooding
    /// would not fit), never computed wrong.
    pub fn q_bits_needed(&self) -> u32 {
        let n = BfvParametersLiteral::n8192().degree;
        let noise = cipherml_he::tensor::product_noise_log2(
            1 << 6,
            n,
            1u128 << self.ring_bits.min(64),
            self.weight_cap(),
            n,
            cipherml_he::tensor::FRESH_NOISE_LOG2,
        );
        let flood = crate::link::flood_log2(n, noise, self.flood_bits + MAX_REVEAL_LOG2);
        Self::q_bits_for_flood(self.ring_bits, flood)
    }

    /// Bits of `Q` for replies flooded to `2^flood` at `t = 2^ring_bits`: `Q / (2t)` above
    /// the flooding, with one bit of margin (what [`SessionConfig::q_bits_needed`] and a
    /// fitted `Q` both use).
    pub fn q_bits_for_flood(ring_bits: u32, flood: u32) -> u32 {
        ring_bits + 1 + flood + 1 + 1
    }

    /// The public cap on quantized weights, `2^weight_bits`.
    pub fn weight_cap(&self) -> u64 {
        1u64 << self.weight_bits.min(62)
    }

    /// The statistical bits of every flooding: `flood_bits + reveal_log2`.
    pub fn reply_flood_bits(&self) -> u32 {
        self.flood_bits + self.reveal_log2
    }

    /// A rayon pool of [`SessionConfig::threads`] threads (`None` for 0: the global pool).
    pub fn thread_pool(&self) -> Result<Option<rayon::ThreadPool>, crate::Error> {
        if self.threads == 0 {
            return Ok(None);
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .build()
            .map(Some)
            .map_err(|e| crate::Error::Invalid {
                what: "thread count",
                detail: format!("{} threads: {e}", self.threads),
            })
    }
}
