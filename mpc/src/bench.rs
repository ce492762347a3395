//! Figures for the workspace's bench output (`cargo run --release --example bench -- mpc`):
//! both parties on TCP loopback, one thread each.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::net::{tcp_loopback_pair, Channel, ChannelConfig, TcpChannel};
use crate::ot::{OtReceiver, OtSender};
use crate::party::Party;
use crate::prg::os_rng;
use crate::ring::Ring;
use crate::share::PartyId;
use crate::triples::he::{HeTripleClient, HeTripleServer};
use rand_chacha::ChaCha20Rng;

/// One measured figure (one JSON line of the bench contract).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchLine {
    /// Name, e.g. `ot.iknp_2e20`.
    pub name: String,
    /// Median time in microseconds.
    pub median_us: f64,
    /// Minimum time in microseconds.
    pub min_us: f64,
    /// Bytes sent by both parties (per run), if meaningful.
    pub bytes: Option<u64>,
    /// Rounds (flights of the busier party) per run, if meaningful.
    pub rounds: Option<u64>,
    /// Threads used (one per party).
    pub threads: usize,
    /// Parameters and derived figures, free text.
    pub params: String,
}

impl BenchLine {
    /// The line as a JSON object.
    pub fn to_json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |x| x.to_string());
        format!(
            "{{\"name\": \"{}\", \"median_us\": {:.1}, \"min_us\": {:.1}, \"bytes\": {}, \"rounds\": {}, \"threads\": {}, \"params\": \"{}\"}}",
            self.name,
            self.median_us,
            self.min_us,
            opt(self.bytes),
            opt(self.rounds),
            self.threads,
            self.params.replace('"', "'")
        )
    }
}

/// Per-run result of a two-party job: time and traffic.
#[derive(Debug, Clone, Copy)]
struct Sample {
    us: f64,
    bytes: u64,
    rounds: u64,
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let min = v.first().copied().unwrap_or(f64::NAN);
    (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), min)
}

/// Runs `setup` once per party (it takes the channel into its state; `chan` gives it
/// back), then `job` repeatedly (at least `min_reps`, until `budget` is spent) with both
/// parties synchronized; time is party 0's, from its go signal to party 1's done.
fn two_party<S0, S1>(
    budget: Duration,
    min_reps: usize,
    setup0: impl FnOnce(TcpChannel) -> Result<S0> + Send + 'static,
    setup1: impl FnOnce(TcpChannel) -> Result<S1> + Send + 'static,
    chan0: fn(&mut S0) -> &mut TcpChannel,
    chan1: fn(&mut S1) -> &mut TcpChannel,
    job0: impl Fn(&mut S0) -> Result<()> + Send + 'static,
    job1: impl Fn(&mut S1) -> Result<()> + Send + 'static,
) -> Result<Vec<Sample>>
where
    S0: Send + 'static,
    S1: Send + 'static,
{
    let cfg = ChannelConfig {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let (c0, c1) = tcp_loopback_pair(cfg)?;
    let h = std::thread::spawn(move || -> Result<Vec<crate::net::Stats>> {
        let mut s = setup1(c1)?;
        let mut out = Vec::new();
        loop {
            let go = chan1(&mut s).recv()?;
            if go.first() != Some(&1) {
                return Ok(out);
            }
            let st = chan1(&mut s).stats();
            job1(&mut s)?;
            let c = chan1(&mut s);
            c.send(&[2])?;
            c.flush()?;
            out.push(c.stats().since(&st));
        }
    });
    let mut s0 = setup0(c0)?;
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < min_reps || start.elapsed() < budget {
        let c = chan0(&mut s0);
        c.send(&[1])?;
        c.flush()?;
        let st = c.stats();
        let t = Instant::now();
        job0(&mut s0)?;
        let c = chan0(&mut s0);
        c.recv()?; // party 1 done
        let us = t.elapsed().as_secs_f64() * 1e6;
        samples.push((us, c.stats().since(&st)));
        if samples.len() >= 1000 {
            break;
        }
    }
    let c = chan0(&mut s0);
    c.send(&[0])?;
    c.flush()?;
    let p1 = h.join().map_err(|_| Error::aborted("party 1 panicked"))??;
    Ok(samples
        .iter()
        .zip(p1)
        .map(|((us, d0), d1)| Sample {
            us: *us,
            // The one-byte "done" message of party 1 (5 bytes) excluded.
            bytes: d0.bytes_sent + d1.bytes_sent - 5,
            rounds: d0.rounds_sent.max(d1.rounds_sent.saturating_sub(1)),
        })
        .collect())
}

fn line(name: &str, samples: &[Sample], params: String) -> BenchLine {
    let (med, min) = median(samples.iter().map(|s| s.us).collect());
    BenchLine {
        name: name.to_string(),
        median_us: med,
        min_us: min,
        bytes: samples.first().map(|s| s.bytes),
        rounds: samples.first().map(|s| s.rounds),
        threads: 2,
        params,
    }
}

/// How one OT direction is set up: IKNP or silent.
type OtSetup<T> = fn(&mut TcpChannel, &mut ChaCha20Rng) -> Result<T>;

/// Samples of 2^20 random OTs after the set-up, and samples of the set-up alone.
fn random_ot_samples(
    budget: Duration,
    sender: OtSetup<OtSender>,
    receiver: OtSetup<OtReceiver>,
) -> Result<(Vec<Sample>, Vec<Sample>)> {
    let n = 1usize << 20;
    let samples = two_party(
        budget,
        3,
        move |mut c| Ok((sender(&mut c, &mut os_rng())?, c)),
        move |mut c| Ok((receiver(&mut c, &mut os_rng())?, c, os_rng())),
        |s| &mut s.1,
        |s| &mut s.1,
        move |(s, c)| {
            std::hint::black_box(s.random_ot(c, n)?);
            Ok(())
        },
        move |(r, c, rng)| {
            std::hint::black_box(r.random_ot(c, n, rng)?);
            Ok(())
        },
    )?;
    let setup = two_party(
        budget / 4,
        2,
        Ok,
        Ok,
        |c| c,
        |c| c,
        move |c| sender(c, &mut os_rng()).map(|_| ()),
        move |c| receiver(c, &mut os_rng()).map(|_| ()),
    )?;
    Ok((samples, setup))
}

/// `ot.iknp_2e20`: 2^20 random OTs by IKNP extension (base OTs done once, apart).
pub fn bench_ot(budget: Duration) -> Result<Vec<BenchLine>> {
    let (samples, base) = random_ot_samples(budget, OtSender::setup, OtReceiver::setup)?;
    Ok(vec![
        line(
            "ot.iknp_2e20",
            &samples,
            "2^20 random OTs (128-bit outputs), semi-honest IKNP, kappa=128, AES-CTR PRG, fixed-key AES CCR hash; target <= 60 ms".into(),
        ),
        line(
            "ot.base_128",
            &base,
            "128 Chou-Orlandi base OTs over Ristretto (setup of one IKNP direction)".into(),
        ),
    ])
}

/// `ot.silent_2e20`: 2^20 random OTs from silent OT (Ferret bootstrap done once, apart;
/// tree refills included), and `ot.silent_setup`: that bootstrap.
pub fn bench_silent(budget: Duration) -> Result<Vec<BenchLine>> {
    let (samples, setup) =
        random_ot_samples(budget, OtSender::setup_silent, OtReceiver::setup_silent)?;
    let per_bits = samples[0].bytes as f64 * 8.0 / (1u64 << 20) as f64;
    Ok(vec![
        line(
            "ot.silent_2e20",
            &samples,
            format!(
                "2^20 random OTs (128-bit outputs) from Ferret silent OT (primal LPN, regular noise, emp-ot's ferret_b11: t=4971, k=2^17, trees of 2^11, d=10; semi-honest), half-tree SPCOT (one block per level) and CCR hash; tree messages included, bootstrap apart; {per_bits:.2} bits per OT"
            ),
        ),
        line(
            "ot.silent_setup",
            &setup,
            "set-up of one silent OT direction: 128 base OTs, 74,036 IKNP OTs, Ferret's bootstrap iteration (t=850, k=2^16, trees of 2^10)".into(),
        ),
    ])
}

/// Every figure of the MPC layer. `budget` is the time spent per figure (roughly).
pub fn bench_lines(budget: Duration) -> Result<Vec<BenchLine>> {
    bench_lines_filtered(budget, None)
}

/// A group of figures: the names of its lines and the function that measures them.
type Suite = (
    &'static [&'static str],
    fn(Duration) -> Result<Vec<BenchLine>>,
);

/// The figures of the MPC layer whose name contains `filter` (all if `None`): a group of
/// lines measured together runs if any of its names matches, and only the matching lines
/// are returned.
pub fn bench_lines_filtered(budget: Duration, filter: Option<&str>) -> Result<Vec<BenchLine>> {
    const SUITES: [Suite; 7] = [
        (&["ot.iknp_2e20", "ot.base_128"], bench_ot),
        (&["ot.silent_2e20", "ot.silent_setup"], bench_silent),
        (&["mpc.relu_2e16", "mpc.relu_2e16.lan"], bench_relu),
        (&["mpc.trunc_2e16"], bench_trunc),
        (
            &["mpc.trunc_msb0_2e16", "mpc.trunc_msb0_ulp_2e16"],
            bench_trunc_msb0,
        ),
        (&["mpc.maxpool_64x64x16"], bench_maxpool),
        (&["mpc.he_triples_8192"], bench_he_triples),
    ];
    let selected = |name: &str| filter.is_none_or(|f| name.contains(f));
    let mut out = Vec::new();
    for (names, run) in SUITES {
        if names.iter().any(|n| selected(n)) {
            out.extend(run(budget)?.into_iter().filter(|l| selected(&l.name)));
        }
    }
    Ok(out)
}

/// This party's share of a fixed two-party sharing of `values` (both parties derive the
/// same sharing from `seed`: bench set-up only, never a protocol).
fn share_of(ring: Ring, id: PartyId, seed: u64, values: &[u64]) -> Vec<u64> {
    use rand::SeedableRng;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let r = ring.random_vec(&mut rng, values.len());
    match id {
        PartyId::P0 => r,
        PartyId::P1 => values
            .iter()
            .zip(&r)
            .map(|(&v, &r)| ring.sub(v, r))
            .collect(),
    }
}

/// `n` values of `Z_2^32` drawn from `seed`: uniform signed ones, or below `2^31` (most
/// significant bit 0) when `nonneg`.
fn bench_values(ring: Ring, seed: u64, n: usize, nonneg: bool) -> Vec<u64> {
    use rand::SeedableRng;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let v = ring.random_vec(&mut rng, n);
    if nonneg {
        v.into_iter().map(|x| x >> 1).collect()
    } else {
        v
    }
}

/// A protocol on shares measured by [`bench_shared_op`].
type SharedOp = fn(&mut Party<TcpChannel, ChaCha20Rng>, Ring, &[u64]) -> Result<Vec<u64>>;

/// Times `op` on this party's share of `n` values (`values(ring)`), both parties on TCP
/// loopback with OT set-up done once, apart, the comparisons on the default digits.
fn bench_shared_op(
    budget: Duration,
    ring: Ring,
    values: impl Fn(Ring) -> Vec<u64> + Send + Sync + 'static,
    op: SharedOp,
) -> Result<Vec<Sample>> {
    bench_shared_op_digits(budget, ring, values, op, crate::protocols::compare::BETA)
}

/// [`bench_shared_op`] with the comparisons on digits of `digit_bits`.
fn bench_shared_op_digits(
    budget: Duration,
    ring: Ring,
    values: impl Fn(Ring) -> Vec<u64> + Send + Sync + 'static,
    op: SharedOp,
    digit_bits: u32,
) -> Result<Vec<Sample>> {
    type P = Party<TcpChannel, ChaCha20Rng>;
    let values = std::sync::Arc::new(values);
    let mk = |id: PartyId| {
        let values = values.clone();
        move |c: TcpChannel| -> Result<(P, Vec<u64>)> {
            let x = share_of(ring, id, 7, &values(ring));
            let mut p = Party::setup(id, c, os_rng())?;
            p.set_digit_bits(digit_bits)?;
            Ok((p, x))
        }
    };
    let job = move |s: &mut (P, Vec<u64>)| {
        let (p, x) = s;
        std::hint::black_box(op(p, ring, x)?);
        Ok(())
    };
    two_party(
        budget,
        2,
        mk(PartyId::P0),
        mk(PartyId::P1),
        |s| s.0.channel(),
        |s| s.0.channel(),
        job,
        job,
    )
}

/// Bits of the truncations measured (the engine's fraction bits).
const TRUNC_BITS: u32 = 12;

/// `mpc.trunc_2e16`: faithful truncation by 12 bits of 2^16 shared signed values in
/// `Z_2^32` ([`crate::protocols::arith::trunc_faithful`]).
pub fn bench_trunc(budget: Duration) -> Result<Vec<BenchLine>> {
    let n = 1usize << 16;
    let ring = Ring::new(32)?;
    let samples = bench_shared_op(
        budget,
        ring,
        move |r| bench_values(r, 1, n, false),
        |p, r, x| crate::protocols::arith::trunc_faithful(p, r, x, TRUNC_BITS),
    )?;
    let per = samples[0].bytes as f64 / n as f64;
    Ok(vec![line(
        "mpc.trunc_2e16",
        &samples,
        format!(
            "faithful truncation (exact arithmetic shift) by {TRUNC_BITS} bits of 2^16 shared signed values in Z_2^32: arith::trunc_faithful, millionaires on 32 and {TRUNC_BITS} bits (beta={}) + one B2A; base OTs apart; {per:.0} bytes per element (both parties)",
            crate::protocols::compare::BETA
        ),
    )])
}

/// `mpc.trunc_msb0_2e16`: exact truncation by 12 bits of 2^16 shared values known
/// non-negative (most significant bit 0) in `Z_2^32`
/// ([`crate::protocols::arith::trunc_nonneg`]); `mpc.trunc_msb0_ulp_2e16`: the same within
/// one unit in the last place ([`crate::protocols::arith::trunc_nonneg_within_ulp`]),
/// Cheetah's known-MSB truncation.
pub fn bench_trunc_msb0(budget: Duration) -> Result<Vec<BenchLine>> {
    let n = 1usize << 16;
    let ring = Ring::new(32)?;
    let exact = bench_shared_op(
        budget,
        ring,
        move |r| bench_values(r, 2, n, true),
        |p, r, x| crate::protocols::arith::trunc_nonneg(p, r, x, TRUNC_BITS),
    )?;
    let ulp = bench_shared_op(
        budget,
        ring,
        move |r| bench_values(r, 2, n, true),
        |p, r, x| crate::protocols::arith::trunc_nonneg_within_ulp(p, r, x, TRUNC_BITS),
    )?;
    let per = |s: &[Sample]| s[0].bytes as f64 / n as f64;
    Ok(vec![
        line(
            "mpc.trunc_msb0_2e16",
            &exact,
            format!(
                "exact truncation by {TRUNC_BITS} bits of 2^16 shared values known non-negative (MSB 0) in Z_2^32: arith::trunc_nonneg, one {TRUNC_BITS}-bit millionaire (beta={}) + one AND for the wrap + one B2A; base OTs apart; {:.0} bytes per element (both parties); Cheetah's known-MSB truncation (within one ulp) is the next line's operation",
                crate::protocols::compare::BETA,
                per(&exact)
            ),
        ),
        line(
            "mpc.trunc_msb0_ulp_2e16",
            &ulp,
            format!(
                "truncation within one ulp by {TRUNC_BITS} bits of 2^16 shared values known non-negative (MSB 0) in Z_2^32 (Cheetah's known-MSB truncation): arith::trunc_nonneg_within_ulp, the wrap by one correlated OT in Z_2^{TRUNC_BITS}, the low bits' carry dropped; base OTs apart; {:.1} bytes per element (both parties); Cheetah's figure for this operation: 164 KB, 7-10 ms",
                per(&ulp)
            ),
        ),
    ])
}

/// `mpc.maxpool_64x64x16`: 2x2 max-pool (stride 2) of a shared `(16, 64, 64)` tensor in
/// `Z_2^32` by [`crate::protocols::compare::max_pool_relu_tree`] (the engine's max-pool),
/// the windows gathered (im2col) in the set-up, outside the timed part.
pub fn bench_maxpool(budget: Duration) -> Result<Vec<BenchLine>> {
    let (c, h, w, k) = (16usize, 64usize, 64usize, 2usize);
    let ring = Ring::new(32)?;
    let (ho, wo) = (h / k, w / k);
    let windows = c * ho * wo;
    let samples = bench_shared_op(
        budget,
        ring,
        move |r| {
            // Fixed-point values within 2^(l-2), as the relu tree requires: signed 20-bit.
            let x: Vec<u64> = bench_values(r, 3, c * h * w, false)
                .into_iter()
                .map(|v| r.from_signed(((v as u32 as i32) >> 12) as i64))
                .collect();
            let mut cols = Vec::with_capacity(x.len());
            for ch in 0..c {
                for i in 0..ho {
                    for j in 0..wo {
                        for di in 0..k {
                            for dj in 0..k {
                                cols.push(x[(ch * h + i * k + di) * w + j * k + dj]);
                            }
                        }
                    }
                }
            }
            cols
        },
        |p, r, x| crate::protocols::compare::max_pool_relu_tree(p, r, x, 4),
    )?;
    let per = samples[0].bytes as f64 / windows as f64;
    Ok(vec![line(
        "mpc.maxpool_64x64x16",
        &samples,
        format!(
            "2x2 max-pool, stride 2, of a shared (C,H,W)=(16,64,64) tensor in Z_2^32 ({windows} windows of 4): compare::max_pool_relu_tree (the engine's Session::max_pool2d), 2 levels of ReLUs (3 ReLUs per window, beta={}), im2col outside the timed part; base OTs apart; {per:.0} bytes per window, {:.0} per input element (both parties)",
            crate::protocols::compare::BETA,
            samples[0].bytes as f64 / (c * h * w) as f64
        ),
    )])
}

/// `mpc.relu_2e16`: ReLU on 2^16 shared 32-bit values (OT setup done once, apart), with
/// the default digits ([`crate::protocols::compare::BETA`], fewest bytes);
/// `mpc.relu_2e16.lan`: the same with the digits a session picks for a 1 Gbit/s LAN
/// ([`crate::protocols::compare::digit_bits_for`]).
pub fn bench_relu(budget: Duration) -> Result<Vec<BenchLine>> {
    let n = 1usize << 16;
    let ring = Ring::new(32)?;
    let lan = crate::protocols::compare::digit_bits_for(8.0);
    let mut out = Vec::new();
    for (name, beta) in [
        ("mpc.relu_2e16", crate::protocols::compare::BETA),
        ("mpc.relu_2e16.lan", lan),
    ] {
        let samples = bench_shared_op_digits(
            budget,
            ring,
            move |r| bench_values(r, 1, n, false),
            crate::protocols::compare::relu,
            beta,
        )?;
        let per = samples[0].bytes as f64 / n as f64;
        out.push(line(
            name,
            &samples,
            format!(
                "ReLU on 2^16 shared values in Z_2^32 (millionaire with beta={beta} digits by 1-of-2^beta OT from silent correlated OT, AND tree from silent random OTs, multiplexer by correlated OT; Ferret bootstrap apart, tree refills included){}; {per:.1} bytes per ReLU; targets (Cheetah, same machine): <= 28 B/ReLU, <= 156 ms",
                if beta == crate::protocols::compare::BETA {
                    ", the default digits (fewest bytes)"
                } else {
                    ", the digits a session picks on a 1 Gbit/s LAN (compare::digit_bits_for)"
                }
            ),
        ));
    }
    Ok(out)
}

/// `mpc.he_triples`: HE-generated Beaver triples (8192 per batch, Z_2^32).
pub fn bench_he_triples(budget: Duration) -> Result<Vec<BenchLine>> {
    let n = 8192usize;
    let ring = Ring::new(32)?;
    let samples = two_party(
        budget,
        2,
        |mut c| Ok((HeTripleServer::setup(&mut c)?, c)),
        |mut c| Ok((HeTripleClient::setup(&mut c, &mut os_rng())?, c)),
        |s| &mut s.1,
        |s| &mut s.1,
        move |(s, c)| s.triples(c, ring, n, &mut os_rng()).map(|_| ()),
        move |(s, c)| s.triples(c, ring, n, &mut os_rng()).map(|_| ()),
    )?;
    let (med, _) = median(samples.iter().map(|s| s.us).collect());
    let per_s = n as f64 / (med / 1e6);
    let bpt = samples[0].bytes as f64 / n as f64;
    Ok(vec![line(
        "mpc.he_triples_8192",
        &samples,
        format!(
            "8192 Beaver triples in Z_2^32 from BFV (N=8192, log QP=218, 60-bit t, 8-bit limbs, flooding); {per_s:.0} triples/s, {bpt:.0} bytes/triple"
        ),
    )])
}
