//! Secure-aggregation benchmarks (`secagg.*`): one SecAgg+ round of
//! [`cipherml_mpc::secagg`], every party in this process, every message through
//! `to_bytes` / `from_bytes`, with the client work and the server work timed apart.
//! Declared from `src/bench.rs`.

use std::time::{Duration, Instant};

use cipherml_mpc::secagg::{
    plaintext_sum_quantized, AdvertiseKeys, ClientId, IncomingShares, MaskedInput, NeighbourKeys,
    SecAggClient, SecAggConfig, SecAggServer, ShareKeys, UnmaskRequest, UnmaskResponse,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::BenchLine;

/// At most this many rounds per configuration (fewer when one round exceeds the budget).
const MAX_RUNS: usize = 15;

/// One round's measurements.
struct Round {
    /// Server compute: `SecAggServer::new`, every `receive_*` / `finish_*`, decoding of the
    /// clients' messages and encoding of its own.
    server_us: f64,
    /// Per client: `SecAggClient::new` (key generation), its stage calls, encoding of its
    /// messages and decoding of the server's.
    client_us: Vec<f64>,
    /// Per client: bytes sent plus bytes received.
    client_bytes: Vec<u64>,
    /// Whether the client sent its masked input (is in `U3`).
    survived: Vec<bool>,
}

/// Runs one round of `n` clients holding seeded random vectors in `[-1, 1]`; the clients
/// of `drop_before_masked` stop after ShareKeys. Panics if any party refuses a message or
/// if the sum differs from [`plaintext_sum_quantized`] over the survivors.
fn round(config: &SecAggConfig, drop_before_masked: &[bool], seed: u64) -> Round {
    let n = config.n() as usize;
    let dim = config.dim();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut round_seed = [0u8; 32];
    rng.fill_bytes(&mut round_seed);
    let client_seeds: Vec<[u8; 32]> = (0..n)
        .map(|_| {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            s
        })
        .collect();
    let input_seed = rng.next_u64();
    let input = |u: usize| -> Vec<f64> {
        let mut r = ChaCha20Rng::seed_from_u64(input_seed ^ (u as u64).wrapping_mul(0x9e37));
        (0..dim).map(|_| r.random_range(-1.0..=1.0)).collect()
    };

    let mut client_us = vec![0.0f64; n];
    let mut client_bytes = vec![0u64; n];
    let mut server_us = 0.0f64;
    let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;

    let t = Instant::now();
    let mut server = SecAggServer::new(config, round_seed);
    server_us += us(t);
    let mut rngs: Vec<ChaCha20Rng> = client_seeds
        .iter()
        .map(|s| ChaCha20Rng::from_seed(*s))
        .collect();
    let mut clients = Vec::with_capacity(n);
    for u in 0..n {
        let t = Instant::now();
        clients.push(
            SecAggClient::new(config, u as ClientId, round_seed, &mut rngs[u]).expect("client"),
        );
        client_us[u] += us(t);
    }

    // Stage 0: AdvertiseKeys.
    for u in 0..n {
        let t = Instant::now();
        let bytes = clients[u].advertise_keys().expect("advertise").to_bytes();
        client_us[u] += us(t);
        client_bytes[u] += bytes.len() as u64;
        let t = Instant::now();
        let msg = AdvertiseKeys::from_bytes(&bytes, config).expect("decode advertise");
        server
            .receive_advertise(u as ClientId, &msg)
            .expect("receive advertise");
        server_us += us(t);
    }
    let t = Instant::now();
    let keys: Vec<(ClientId, Vec<u8>)> = server
        .finish_advertise()
        .expect("finish advertise")
        .iter()
        .map(|(u, m)| (*u, m.to_bytes()))
        .collect();
    server_us += us(t);

    // Stage 1: ShareKeys.
    for (u, bytes) in keys {
        let i = u as usize;
        client_bytes[i] += bytes.len() as u64;
        let t = Instant::now();
        let msg = NeighbourKeys::from_bytes(&bytes, config).expect("decode neighbour keys");
        let out = clients[i]
            .share_keys(&msg, &mut rngs[i])
            .expect("share keys")
            .to_bytes();
        client_us[i] += us(t);
        client_bytes[i] += out.len() as u64;
        let t = Instant::now();
        let msg = ShareKeys::from_bytes(&out, config).expect("decode share keys");
        server.receive_share_keys(u, msg).expect("receive shares");
        server_us += us(t);
    }
    let t = Instant::now();
    let incoming: Vec<(ClientId, Vec<u8>)> = server
        .finish_share_keys()
        .expect("finish share keys")
        .iter()
        .map(|(u, m)| (*u, m.to_bytes()))
        .collect();
    server_us += us(t);

    // Stage 2: MaskedInput; the reference sum is accumulated outside the timers.
    let mask = config.modulus_mask();
    let mut reference = vec![0u64; config.vector_len()];
    let mut survived = vec![false; n];
    for (u, bytes) in incoming {
        let i = u as usize;
        if drop_before_masked[i] {
            continue;
        }
        let x = input(i);
        let q = plaintext_sum_quantized(config, std::slice::from_ref(&x), None).expect("ref");
        for (r, v) in reference.iter_mut().zip(q) {
            *r = r.wrapping_add(v) & mask;
        }
        survived[i] = true;
        client_bytes[i] += bytes.len() as u64;
        let t = Instant::now();
        let msg = IncomingShares::from_bytes(&bytes, config).expect("decode incoming");
        let out = clients[i]
            .masked_input(&msg, &x, None)
            .expect("masked input")
            .to_bytes();
        client_us[i] += us(t);
        client_bytes[i] += out.len() as u64;
        let t = Instant::now();
        let msg = MaskedInput::from_bytes(&out, config).expect("decode masked input");
        server
            .receive_masked_input(u, &msg)
            .expect("receive masked input");
        drop(msg);
        server_us += us(t);
    }
    let t = Instant::now();
    let requests: Vec<(ClientId, Vec<u8>)> = server
        .finish_masked_input()
        .expect("finish masked input")
        .iter()
        .map(|(u, m)| (*u, m.to_bytes()))
        .collect();
    server_us += us(t);

    // Stage 3: Unmask.
    for (u, bytes) in requests {
        let i = u as usize;
        client_bytes[i] += bytes.len() as u64;
        let t = Instant::now();
        let msg = UnmaskRequest::from_bytes(&bytes, config).expect("decode unmask request");
        let out = clients[i].unmask(&msg).expect("unmask").to_bytes();
        client_us[i] += us(t);
        client_bytes[i] += out.len() as u64;
        let t = Instant::now();
        let msg = UnmaskResponse::from_bytes(&out, config).expect("decode unmask response");
        server.receive_unmask(u, msg).expect("receive unmask");
        server_us += us(t);
    }
    let t = Instant::now();
    let out = server.finish_unmask().expect("finish unmask");
    server_us += us(t);

    let expected: Vec<ClientId> = (0..n as ClientId)
        .filter(|&u| survived[u as usize])
        .collect();
    assert_eq!(out.survivors, expected, "secagg bench: wrong survivor set");
    assert!(
        out.sum == reference,
        "secagg bench: the aggregated sum differs from plaintext_sum_quantized of the survivors"
    );
    Round {
        server_us,
        client_us,
        client_bytes,
        survived,
    }
}

/// Median (upper middle) and minimum of `v`.
fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (v[v.len() / 2], v[0])
}

/// Secure-aggregation benchmarks, `secagg.n{100,1000}.d{1e4,1e5}.drop{0,10}` with the
/// suffixes `.server` (server compute for the whole round), `.client` (mean compute and
/// traffic per client that finished the round) and `.total` (everything, one thread), for
/// the configurations whose name contains `filter` (all if `None`).
///
/// One SecAgg+ round ([`SecAggConfig::recommended`]: `k = 2 ceil(log2 n) + 1`,
/// `t = min(k, n)/2 + 1`, inputs clipped to `[-1, 1]` and quantized to 16 bits, smallest
/// modulus), every party in this process on one thread, every message through
/// `to_bytes` / `from_bytes`; with `drop10`, a seeded 10% of the clients drop after
/// ShareKeys (before sending their masked input), so the server reconstructs their mask
/// keys and removes their pairwise masks. Rounds repeat until `budget` is spent (at least
/// one, at most 15); each round's sum is checked against
/// [`plaintext_sum_quantized`] of the survivors (a mismatch panics).
pub fn secagg(budget: Duration, filter: Option<&str>, emit: &mut (dyn FnMut(BenchLine) + Send)) {
    for n in [100u32, 1000] {
        for (dim, dtag) in [(10_000usize, "1e4"), (100_000, "1e5")] {
            for drop_pct in [0u32, 10] {
                let name = format!("secagg.n{n}.d{dtag}.drop{drop_pct}");
                if filter.is_some_and(|f| !name.contains(f)) {
                    continue;
                }
                secagg_config(&name, n, dim, drop_pct, budget, emit);
            }
        }
    }
}

fn secagg_config(
    name: &str,
    n: u32,
    dim: usize,
    drop_pct: u32,
    budget: Duration,
    emit: &mut (dyn FnMut(BenchLine) + Send),
) {
    let config = SecAggConfig::recommended(n, dim).expect("recommended configuration");
    let q = config.quantization();
    let mut pick = ChaCha20Rng::seed_from_u64(0x5eca_0000 + u64::from(n) + u64::from(drop_pct));
    let n_drop = (n * drop_pct / 100) as usize;
    let mut drop_before_masked = vec![false; n as usize];
    for i in rand::seq::index::sample(&mut pick, n as usize, n_drop) {
        drop_before_masked[i] = true;
    }

    let mut server = Vec::new();
    let mut client = Vec::new();
    let mut total = Vec::new();
    let mut last = None;
    let start = Instant::now();
    while server.is_empty() || (start.elapsed() < budget && server.len() < MAX_RUNS) {
        let r = round(&config, &drop_before_masked, 1 + server.len() as u64);
        let surv = r.survived.iter().filter(|&&s| s).count();
        let client_sum_surv: f64 = r
            .client_us
            .iter()
            .zip(&r.survived)
            .filter(|(_, &s)| s)
            .map(|(t, _)| t)
            .sum();
        server.push(r.server_us);
        client.push(client_sum_surv / surv as f64);
        total.push(r.server_us + r.client_us.iter().sum::<f64>());
        last = Some(r);
    }
    let runs = server.len();
    let r = last.expect("at least one round");
    let surv = r.survived.iter().filter(|&&s| s).count();
    let bytes_all: u64 = r.client_bytes.iter().sum();
    let bytes_surv: u64 = r
        .client_bytes
        .iter()
        .zip(&r.survived)
        .filter(|(_, &s)| s)
        .map(|(b, _)| b)
        .sum();
    let mean_client_all = r.client_us.iter().sum::<f64>() / f64::from(n);
    let dropout = if n_drop == 0 {
        "no dropout".to_string()
    } else {
        format!(
            "{n_drop} clients ({drop_pct}%) drop after ShareKeys, before MaskedInput (stage 2): \
             the server reconstructs their mask keys and removes their pairwise masks"
        )
    };
    let common = format!(
        "SecAgg+ n={n} D={dim} k={} t={} modulus 2^{} quantization clip {:?} {} bits; {dropout}; \
         all parties in one process, messages through to_bytes/from_bytes, one thread; \
         sum checked against plaintext_sum_quantized; {runs} run(s)",
        config.k(),
        config.t(),
        config.modulus_bits(),
        q.clip,
        q.bits,
    );
    let mk = |suffix: &str, t: (f64, f64), bytes: u64, what: String| BenchLine {
        name: format!("{name}.{suffix}"),
        median_us: t.0,
        min_us: t.1,
        bytes: Some(bytes),
        rounds: Some(4),
        threads: 1,
        params: format!("{what}; {common}"),
    };
    emit(mk(
        "server",
        median_min(server),
        bytes_all,
        "server compute for the whole round (new, receive_*/finish_*, decoding the clients' \
         messages, encoding its own); bytes = server sent + received"
            .into(),
    ));
    emit(mk(
        "client",
        median_min(client),
        bytes_surv / surv as u64,
        format!(
            "mean compute per client over the {surv} clients that finished the round (key \
             generation, its four stage calls, encoding its messages, decoding the server's); \
             bytes = mean sent + received per such client; mean over all {n} clients: {:.0} us, \
             {} bytes",
            mean_client_all,
            bytes_all / u64::from(n)
        ),
    ));
    emit(mk(
        "total",
        median_min(total),
        bytes_all,
        "server plus all clients' compute, one after the other on one thread; bytes = all \
         traffic"
            .into(),
    ));
}
