//! Secure aggregation (SecAgg+): exact sums under dropouts, failures below the threshold,
//! a statistical privacy check with a negative control, unmask refusals, the overflow
//! check, and hostile messages.

use std::collections::BTreeMap;

use cipherml_mpc::secagg::crypto::expand_mask;
use cipherml_mpc::secagg::shamir;
use cipherml_mpc::secagg::{
    plaintext_sum_quantized, simulate, AdvertiseKeys, DropoutPlan, IncomingShares, MalformedReason,
    MaskedInput, NeighbourKeys, Quantization, SecAggClient, SecAggConfig, SecAggError,
    SecAggParams, SecAggServer, ShareKeys, ShareKind, Stage, UnmaskRequest, UnmaskResponse,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn random_inputs(n: u32, dim: usize, rng: &mut ChaCha20Rng) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.2..1.2)).collect())
        .collect()
}

fn survivors_inputs(inputs: &[Vec<f64>], plan: &DropoutPlan) -> Vec<Vec<f64>> {
    plan.survivors(inputs.len() as u32)
        .into_iter()
        .map(|u| inputs[u as usize].clone())
        .collect()
}

/// Runs `simulate` and checks the raw sum against the plaintext reference over `U3`
/// exactly, and the de-quantized sum against the float sum of the clipped inputs.
fn check_exact(config: &SecAggConfig, plan: &DropoutPlan, seed: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let inputs = random_inputs(config.n(), config.dim(), &mut rng);
    let (deq, raw) = simulate(config, &inputs, None, plan, &mut rng).unwrap();
    let surv = survivors_inputs(&inputs, plan);
    assert_eq!(raw, plaintext_sum_quantized(config, &surv, None).unwrap());
    let c = config.quantization().clip;
    let step = 2.0 * c / config.levels() as f64;
    for j in 0..config.dim() {
        let exact: f64 = surv.iter().map(|x| x[j].clamp(-c, c)).sum();
        let tol = surv.len() as f64 * step / 2.0 + 1e-9;
        assert!(
            (deq[j] - exact).abs() <= tol,
            "entry {j}: {} vs {exact}",
            deq[j]
        );
    }
}

#[test]
fn exact_sum_with_dropouts_at_each_stage() {
    let config = SecAggConfig::recommended(10, 8).unwrap();
    assert_eq!((config.k(), config.t()), (9, 5));
    let plans = [
        DropoutPlan::none(),
        DropoutPlan {
            before_advertise: vec![1, 7],
            ..DropoutPlan::default()
        },
        DropoutPlan {
            before_share_keys: vec![0, 4],
            ..DropoutPlan::default()
        },
        DropoutPlan {
            before_masked_input: vec![2, 9],
            ..DropoutPlan::default()
        },
        DropoutPlan {
            before_unmask: vec![3, 5],
            ..DropoutPlan::default()
        },
        DropoutPlan {
            before_advertise: vec![1],
            before_share_keys: vec![4],
            before_masked_input: vec![9],
            before_unmask: vec![5],
        },
    ];
    for (i, plan) in plans.iter().enumerate() {
        check_exact(&config, plan, 100 + i as u64);
    }
}

#[test]
fn exact_sum_for_many_sizes() {
    for (n, dim) in [(3u32, 16usize), (10, 16), (50, 8), (200, 4)] {
        let config = SecAggConfig::recommended(n, dim).unwrap();
        let plan = if n == 3 {
            DropoutPlan {
                before_masked_input: vec![2],
                ..DropoutPlan::default()
            }
        } else {
            // About 10% dropouts spread over the four stages.
            let d: Vec<u32> = (0..n).filter(|u| u % 10 == 3).collect();
            let q = d.len().div_ceil(4);
            let mut chunks = d.chunks(q.max(1)).map(|c| c.to_vec());
            DropoutPlan {
                before_advertise: chunks.next().unwrap_or_default(),
                before_share_keys: chunks.next().unwrap_or_default(),
                before_masked_input: chunks.next().unwrap_or_default(),
                before_unmask: chunks.next().unwrap_or_default(),
            }
        };
        check_exact(&config, &plan, u64::from(n));
    }
}

#[test]
fn weighted_sum_for_fedavg() {
    let mut p = SecAggParams::recommended(12, 6);
    p.max_weight = Some(1000);
    let config = SecAggConfig::new(p).unwrap();
    assert_eq!(config.vector_len(), 7);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let inputs = random_inputs(12, 6, &mut rng);
    let weights: Vec<u64> = (0..12).map(|_| rng.random_range(0..=1000)).collect();
    let plan = DropoutPlan {
        before_masked_input: vec![4],
        before_unmask: vec![8],
        ..DropoutPlan::default()
    };
    let (deq, raw) = simulate(&config, &inputs, Some(&weights), &plan, &mut rng).unwrap();
    let surv = plan.survivors(12);
    let sw: Vec<u64> = surv.iter().map(|&u| weights[u as usize]).collect();
    let sx = survivors_inputs(&inputs, &plan);
    assert_eq!(
        raw,
        plaintext_sum_quantized(&config, &sx, Some(&sw)).unwrap()
    );
    let total: u64 = sw.iter().sum();
    assert_eq!(raw[6], total);
    let step = 2.0 / config.levels() as f64;
    for j in 0..6 {
        let exact: f64 = sx
            .iter()
            .zip(&sw)
            .map(|(x, &w)| w as f64 * x[j].clamp(-1.0, 1.0))
            .sum();
        assert!((deq[j] - exact).abs() <= total as f64 * step / 2.0 + 1e-6);
    }
    // A weight above the declared maximum, or a missing weight, is refused.
    let mut bad = weights.clone();
    bad[0] = 1001;
    assert!(matches!(
        simulate(&config, &inputs, Some(&bad), &plan, &mut rng),
        Err(SecAggError::InvalidWeight {
            weight: Some(1001),
            max: Some(1000)
        })
    ));
    assert!(matches!(
        simulate(&config, &inputs, None, &plan, &mut rng),
        Err(SecAggError::InvalidWeight { weight: None, .. })
    ));
}

#[test]
fn too_few_survivors_is_a_typed_error_at_each_stage() {
    let config = SecAggConfig::recommended(10, 4).unwrap();
    let six: Vec<u32> = vec![0, 2, 3, 5, 6, 8];
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let inputs = random_inputs(10, 4, &mut rng);
    let cases = [
        (
            Stage::AdvertiseKeys,
            DropoutPlan {
                before_advertise: six.clone(),
                ..DropoutPlan::default()
            },
        ),
        (
            Stage::ShareKeys,
            DropoutPlan {
                before_share_keys: six.clone(),
                ..DropoutPlan::default()
            },
        ),
        (
            Stage::MaskedInput,
            DropoutPlan {
                before_masked_input: six.clone(),
                ..DropoutPlan::default()
            },
        ),
        (
            Stage::Unmask,
            DropoutPlan {
                before_unmask: six.clone(),
                ..DropoutPlan::default()
            },
        ),
    ];
    for (stage, plan) in cases {
        let e = simulate(&config, &inputs, None, &plan, &mut rng).unwrap_err();
        assert_eq!(
            e,
            SecAggError::TooFewSurvivors {
                stage,
                needed: 5,
                got: 4
            }
        );
        assert!(e.to_string().contains(&stage.to_string()));
    }
    // Exactly t survivors still works (n = 9: complete graph, k = 9, t = 5).
    let config9 = SecAggConfig::recommended(9, 4).unwrap();
    assert_eq!((config9.k(), config9.t()), (9, 5));
    let five = DropoutPlan {
        before_masked_input: vec![0, 2, 3, 6],
        ..DropoutPlan::default()
    };
    check_exact(&config9, &five, 3);
}

/// Drives one round by hand with a known round seed; returns the parties after stage 2
/// with the requests of stage 3.
struct Round {
    server: SecAggServer,
    clients: Vec<SecAggClient>,
    rng: ChaCha20Rng,
}

impl Round {
    fn new(config: &SecAggConfig, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut round_seed = [0u8; 32];
        rng.fill_bytes(&mut round_seed);
        let server = SecAggServer::new(config, round_seed);
        let clients = (0..config.n())
            .map(|u| SecAggClient::new(config, u, round_seed, &mut rng).unwrap())
            .collect();
        Round {
            server,
            clients,
            rng,
        }
    }

    fn advertise(&mut self, drop: &[u32]) -> BTreeMap<u32, NeighbourKeys> {
        for c in self.clients.iter_mut() {
            if !drop.contains(&c.id()) {
                let m = c.advertise_keys().unwrap();
                self.server.receive_advertise(c.id(), &m).unwrap();
            }
        }
        self.server.finish_advertise().unwrap()
    }

    fn share(&mut self, keys: &BTreeMap<u32, NeighbourKeys>) -> BTreeMap<u32, ShareKeys> {
        keys.iter()
            .map(|(&u, k)| {
                let m = self.clients[u as usize]
                    .share_keys(k, &mut self.rng)
                    .unwrap();
                (u, m)
            })
            .collect()
    }
}

#[test]
fn requests_never_ask_for_both_secrets_and_clients_refuse_bad_requests() {
    let mut p = SecAggParams::recommended(30, 3);
    p.k = 7;
    p.t = 4;
    let config = SecAggConfig::new(p).unwrap();
    let mut r = Round::new(&config, 77);
    let keys = r.advertise(&[]);
    for (u, m) in r.share(&keys) {
        r.server.receive_share_keys(u, m).unwrap();
    }
    let incoming = r.server.finish_share_keys().unwrap();
    let dropped = [4u32, 11, 20];
    for (&u, m) in &incoming {
        if !dropped.contains(&u) {
            let y = r.clients[u as usize]
                .masked_input(m, &[0.5, -0.5, 0.0], None)
                .unwrap();
            r.server.receive_masked_input(u, &y).unwrap();
        }
    }
    let requests = r.server.finish_masked_input().unwrap();
    let graph = r.server.graph().clone();
    for (&u, req) in &requests {
        assert!(!dropped.contains(&u));
        // A dropped client's self mask is never requested, a survivor's key never is.
        assert!(req.survivors.iter().all(|v| !dropped.contains(v)));
        assert!(req.dropped.iter().all(|v| dropped.contains(v)));
        assert!(req.survivors.contains(&u));
        for &v in req.survivors.iter().chain(&req.dropped) {
            assert!(v == u || graph.are_neighbours(u, v));
        }
        let want_dropped: Vec<u32> = dropped
            .iter()
            .copied()
            .filter(|&v| graph.are_neighbours(u, v))
            .collect();
        assert_eq!(req.dropped, want_dropped);
    }
    // Client refusals, each on a fresh copy of a request to a client with a dropped
    // neighbour.
    let (&u, req) = requests
        .iter()
        .find(|(_, q)| !q.dropped.is_empty())
        .unwrap();
    let survivor_nb = *req.survivors.iter().find(|&&v| v != u).unwrap();
    let d = req.dropped[0];
    let non_nb = (0..30)
        .find(|&v| v != u && !graph.are_neighbours(u, v))
        .unwrap();
    let bad_requests = [
        (
            UnmaskRequest {
                survivors: req.survivors.clone(),
                dropped: vec![d, survivor_nb],
            },
            SecAggError::BothSharesRequested {
                client: survivor_nb,
            },
        ),
        (
            UnmaskRequest {
                survivors: vec![u, d],
                dropped: vec![d],
            },
            SecAggError::BothSharesRequested { client: d },
        ),
        (
            UnmaskRequest {
                survivors: vec![u, non_nb],
                dropped: vec![],
            },
            SecAggError::NotNeighbour {
                stage: Stage::Unmask,
                from: u,
                to: non_nb,
            },
        ),
        (
            UnmaskRequest {
                survivors: vec![],
                dropped: vec![u],
            },
            SecAggError::SelfListedAsDropped { client: u },
        ),
    ];
    for (bad, want) in bad_requests {
        // The client is consumed by a refusal (it fails), so rebuild the state: a refused
        // request must not yield any share.
        let mut r2 = Round::new(&config, 77);
        let keys2 = r2.advertise(&[]);
        let sk = r2.share(&keys2);
        for (v, m) in sk {
            r2.server.receive_share_keys(v, m).unwrap();
        }
        let inc2 = r2.server.finish_share_keys().unwrap();
        r2.clients[u as usize]
            .masked_input(&inc2[&u], &[0.5, -0.5, 0.0], None)
            .unwrap();
        assert_eq!(r2.clients[u as usize].unmask(&bad).unwrap_err(), want);
        // After a refusal the client answers nothing more, not even a valid request.
        assert!(matches!(
            r2.clients[u as usize].unmask(req),
            Err(SecAggError::WrongStage { .. })
        ));
    }
    // The honest requests complete and give the exact sum.
    for (&u, req) in &requests {
        let resp = r.clients[u as usize].unmask(req).unwrap();
        r.server.receive_unmask(u, resp).unwrap();
    }
    let out = r.server.finish_unmask().unwrap();
    let surv: Vec<Vec<f64>> = out.survivors.iter().map(|_| vec![0.5, -0.5, 0.0]).collect();
    assert_eq!(out.survivors.len(), 27);
    assert_eq!(
        out.sum,
        plaintext_sum_quantized(&config, &surv, None).unwrap()
    );
}

#[test]
fn too_few_holders_of_one_client_is_a_typed_error() {
    // A client whose neighbours all drop before stage 1 cannot have its secrets recovered.
    let mut p = SecAggParams::recommended(20, 2);
    p.k = 5;
    p.t = 3;
    let config = SecAggConfig::new(p).unwrap();
    let mut r = Round::new(&config, 3);
    let nb = r.server.graph().neighbours(0);
    assert_eq!(nb.len(), 4);
    for c in r.clients.iter_mut() {
        if !nb[..3].contains(&c.id()) {
            let m = c.advertise_keys().unwrap();
            r.server.receive_advertise(c.id(), &m).unwrap();
        }
    }
    let e = r.server.finish_advertise().unwrap_err();
    assert!(
        matches!(
            e,
            SecAggError::TooFewHolders {
                stage: Stage::AdvertiseKeys,
                needed: 3,
                got,
                ..
            } if got < 3
        ),
        "{e:?}"
    );
    // The failed server refuses everything afterwards.
    assert!(matches!(
        r.server.finish_share_keys(),
        Err(SecAggError::WrongStage { .. })
    ));
}

fn chi_square_uniform(hist: &[u64]) -> f64 {
    let total: u64 = hist.iter().sum();
    let e = total as f64 / hist.len() as f64;
    hist.iter().map(|&o| (o as f64 - e).powi(2) / e).sum()
}

fn chi_square_two_sample(a: &[u64], b: &[u64]) -> f64 {
    // Equal sample sizes: sum (a_i - b_i)^2 / (a_i + b_i) over non-empty bins.
    a.iter()
        .zip(b)
        .filter(|(x, y)| *x + *y > 0)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2) / (x + y) as f64)
        .sum()
}

/// Client 0's masked value as the server sees it, and the same value with its
/// (server-reconstructed) self mask removed. Everyone's randomness is fixed except client
/// 0's self-mask seed (and its Shamir coefficients), drawn from `mask_rng`.
fn client0_view(config: &SecAggConfig, x0: f64, mask_rng: &mut ChaCha20Rng) -> (u64, u64) {
    let round_seed = [42u8; 32];
    let mut server = SecAggServer::new(config, round_seed);
    let mut fixed: Vec<ChaCha20Rng> = (0..3)
        .map(|u| ChaCha20Rng::seed_from_u64(1000 + u))
        .collect();
    let mut clients: Vec<SecAggClient> = (0..3)
        .map(|u| SecAggClient::new(config, u, round_seed, &mut fixed[u as usize]).unwrap())
        .collect();
    for c in clients.iter_mut() {
        let m = c.advertise_keys().unwrap();
        server.receive_advertise(c.id(), &m).unwrap();
    }
    let keys = server.finish_advertise().unwrap();
    for (&u, k) in &keys {
        let m = if u == 0 {
            clients[0].share_keys(k, mask_rng).unwrap()
        } else {
            clients[u as usize]
                .share_keys(k, &mut fixed[u as usize])
                .unwrap()
        };
        server.receive_share_keys(u, m).unwrap();
    }
    let inc = server.finish_share_keys().unwrap();
    let xs = [x0, 0.3, -0.6];
    let mut y0 = 0;
    for (&u, m) in &inc {
        let y = clients[u as usize]
            .masked_input(m, &[xs[u as usize]], None)
            .unwrap();
        if u == 0 {
            y0 = y.masked[0];
        }
        server.receive_masked_input(u, &y).unwrap();
    }
    let reqs = server.finish_masked_input().unwrap();
    let mut pts = Vec::new();
    for (&u, q) in &reqs {
        let resp = clients[u as usize].unmask(q).unwrap();
        for s in &resp.shares {
            if s.owner == 0 && s.kind == ShareKind::SelfMask {
                pts.push((u64::from(u) + 1, s.share));
            }
        }
        server.receive_unmask(u, resp).unwrap();
    }
    server.finish_unmask().unwrap();
    let b0 = shamir::reconstruct(&pts[..2]).unwrap();
    let m = config.modulus_mask();
    let self_mask = expand_mask(&b0, 1, m)[0];
    (y0, y0.wrapping_sub(self_mask) & m)
}

#[test]
fn masked_input_is_uniform_and_independent_of_the_update() {
    let config = SecAggConfig::new(SecAggParams {
        n: 3,
        k: 3,
        t: 2,
        dim: 1,
        quantization: Quantization { clip: 1.0, bits: 4 },
        max_weight: None,
        modulus_bits: Some(8),
    })
    .unwrap();
    let trials = 2560; // 10 per bin of 256
    let mut mask_rng = ChaCha20Rng::seed_from_u64(2024);
    let mut hists = Vec::new();
    let mut unmasked = Vec::new();
    for x0 in [-0.9, 0.7] {
        let mut h = vec![0u64; 256];
        let mut hu = vec![0u64; 256];
        for _ in 0..trials {
            let (y, without_self) = client0_view(&config, x0, &mut mask_rng);
            h[y as usize] += 1;
            hu[without_self as usize] += 1;
        }
        hists.push(h);
        unmasked.push(hu);
    }
    // df = 255: mean 255, sd ~22.6; 400 is > 6 sd (false alarm < 1e-8).
    let bound = 400.0;
    for h in &hists {
        let c = chi_square_uniform(h);
        assert!(c < bound, "masked view not uniform: chi2 = {c}");
    }
    let c2 = chi_square_two_sample(&hists[0], &hists[1]);
    assert!(c2 < bound, "views for two updates differ: chi2 = {c2}");
    // Negative control: without the self mask (pairwise masks fixed by the fixed keys)
    // the view is a constant that depends on the update: the same tests must fail.
    for hu in &unmasked {
        assert!(chi_square_uniform(hu) > 10.0 * bound);
    }
    assert!(chi_square_two_sample(&unmasked[0], &unmasked[1]) > 10.0 * bound);
}

#[test]
fn overflow_and_parameter_checks() {
    let mut p = SecAggParams::recommended(300, 4);
    p.modulus_bits = Some(24);
    let e = SecAggConfig::new(p).unwrap_err();
    assert_eq!(
        e,
        SecAggError::ModulusOverflow {
            n: 300,
            max_entry: 65535,
            max_sum: 300 * 65535,
            modulus_bits: 24
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("300") && msg.contains("65535") && msg.contains("2^24"),
        "{msg}"
    );
    p.modulus_bits = Some(25);
    assert_eq!(SecAggConfig::new(p).unwrap().modulus_bits(), 25);
    p.modulus_bits = None;
    // Smallest b with 300 * 65535 < 2^b: 2^24 = 16777216 < 19660500 < 2^25.
    assert_eq!(SecAggConfig::new(p).unwrap().modulus_bits(), 25);
    // Weights enter the bound.
    let mut w = SecAggParams::recommended(10, 4);
    w.quantization.bits = 8;
    w.modulus_bits = Some(32);
    w.max_weight = Some(1 << 20);
    assert!(SecAggConfig::new(w).is_ok()); // 10 * 255 * 2^20 < 2^32
    w.max_weight = Some(1 << 21);
    assert!(matches!(
        SecAggConfig::new(w),
        Err(SecAggError::ModulusOverflow { n: 10, max_entry, modulus_bits: 32, .. })
            if max_entry == 255 << 21
    ));
    // More than 64 bits needed.
    let mut big = SecAggParams::recommended(1 << 20, 1);
    big.quantization.bits = 32;
    big.max_weight = Some(1 << 32);
    assert!(matches!(
        SecAggConfig::new(big),
        Err(SecAggError::ModulusOverflow {
            modulus_bits: 64,
            ..
        })
    ));
    // Thresholds and k.
    let mut t = SecAggParams::recommended(50, 4);
    assert_eq!((t.k, t.t), (13, 7));
    t.t = 6;
    assert_eq!(
        SecAggConfig::new(t).unwrap_err(),
        SecAggError::ThresholdOutOfRange {
            t: 6,
            holders: 13,
            min: 7
        }
    );
    t.t = 7;
    t.k = 12;
    assert!(matches!(
        SecAggConfig::new(t),
        Err(SecAggError::InvalidParameter {
            name: "k",
            value: 12,
            ..
        })
    ));
    let r3 = SecAggParams::recommended(3, 1);
    assert_eq!((r3.k, r3.t), (5, 2));
    let r200 = SecAggParams::recommended(200, 1);
    assert_eq!((r200.k, r200.t), (17, 9));
    let mut c = SecAggParams::recommended(5, 1);
    c.quantization.clip = f64::NAN;
    assert!(matches!(
        SecAggConfig::new(c),
        Err(SecAggError::InvalidClip { .. })
    ));
}

#[test]
fn hostile_messages_are_refused_without_panic() {
    let mut p = SecAggParams::recommended(12, 4);
    p.k = 5;
    p.t = 3;
    let config = SecAggConfig::new(p).unwrap();
    let mut r = Round::new(&config, 11);

    // Stage 0: unknown id, someone else's id, replay.
    let m0 = r.clients[0].advertise_keys().unwrap();
    let m1 = r.clients[1].advertise_keys().unwrap();
    let mut fake = m0.clone();
    fake.id = 99;
    assert!(matches!(
        r.server.receive_advertise(99, &fake),
        Err(SecAggError::UnknownClient { id: 99, n: 12, .. })
    ));
    assert!(AdvertiseKeys::from_bytes(&fake.to_bytes(), &config).is_err());
    assert_eq!(
        r.server.receive_advertise(2, &m1).unwrap_err(),
        SecAggError::WrongSender {
            stage: Stage::AdvertiseKeys,
            from: 2,
            claimed: 1
        }
    );
    r.server.receive_advertise(0, &m0).unwrap();
    r.server.receive_advertise(1, &m1).unwrap();
    assert_eq!(
        r.server.receive_advertise(0, &m0).unwrap_err(),
        SecAggError::Duplicate {
            stage: Stage::AdvertiseKeys,
            id: 0
        }
    );
    // Out of order.
    assert!(matches!(
        r.server.finish_share_keys(),
        Err(SecAggError::WrongStage {
            expected: Stage::ShareKeys,
            ..
        })
    ));
    for c in r.clients[2..].iter_mut() {
        let m = c.advertise_keys().unwrap();
        r.server.receive_advertise(c.id(), &m).unwrap();
    }
    let keys = r.server.finish_advertise().unwrap();

    // Stage 1: a share addressed to a non-neighbour, a missing share, a claimed id.
    let graph = r.server.graph().clone();
    let mut shares = r.share(&keys);
    let s0 = shares.remove(&0).unwrap();
    let non_nb = (1..12).find(|&v| !graph.are_neighbours(0, v)).unwrap();
    let mut bad = s0.clone();
    bad.shares[0].peer = non_nb;
    assert_eq!(
        r.server.receive_share_keys(0, bad).unwrap_err(),
        SecAggError::NotNeighbour {
            stage: Stage::ShareKeys,
            from: 0,
            to: non_nb
        }
    );
    let mut short = s0.clone();
    short.shares.pop();
    assert!(matches!(
        r.server.receive_share_keys(0, short),
        Err(SecAggError::IncompleteMessage {
            expected: 4,
            got: 3,
            ..
        })
    ));
    let mut dup = s0.clone();
    dup.shares[1].peer = dup.shares[0].peer;
    assert!(matches!(
        r.server.receive_share_keys(0, dup),
        Err(SecAggError::Duplicate { .. })
    ));
    assert!(matches!(
        r.server.receive_share_keys(5, s0.clone()),
        Err(SecAggError::WrongSender {
            from: 5,
            claimed: 0,
            ..
        })
    ));
    r.server.receive_share_keys(0, s0.clone()).unwrap();
    assert!(matches!(
        r.server.receive_share_keys(0, s0.clone()),
        Err(SecAggError::Duplicate { .. })
    ));
    for (u, m) in shares {
        r.server.receive_share_keys(u, m).unwrap();
    }
    let incoming = r.server.finish_share_keys().unwrap();

    // A tampered or re-routed share does not decrypt (checked on a copy of client 3).
    let mut tampered = incoming[&3].clone();
    tampered.shares[0].ciphertext[5] ^= 1;
    let mut r2 = Round::new(&config, 11);
    let k2 = r2.advertise(&[]);
    let _ = r2.share(&k2);
    let e = r2.clients[3]
        .masked_input(&tampered, &[0.0; 4], None)
        .unwrap_err();
    assert!(
        matches!(e, SecAggError::DecryptionFailed { to: 3, .. }),
        "{e:?}"
    );
    let mut rerouted = incoming[&3].clone();
    let sender = rerouted.shares[0].peer;
    rerouted.shares[0].ciphertext = incoming[&sender]
        .shares
        .iter()
        .find(|s| s.peer != 3)
        .unwrap()
        .ciphertext;
    let mut r3 = Round::new(&config, 11);
    let k3 = r3.advertise(&[]);
    let _ = r3.share(&k3);
    assert!(matches!(
        r3.clients[3].masked_input(&rerouted, &[0.0; 4], None),
        Err(SecAggError::DecryptionFailed { .. })
    ));

    // Stage 2: wrong length, out-of-range entry, replay, sender outside U2.
    let mut ys = BTreeMap::new();
    for (&u, m) in &incoming {
        ys.insert(
            u,
            r.clients[u as usize]
                .masked_input(m, &[0.1; 4], None)
                .unwrap(),
        );
    }
    let y0 = ys[&0].clone();
    let mut long = y0.clone();
    long.masked.push(0);
    assert!(matches!(
        r.server.receive_masked_input(0, &long),
        Err(SecAggError::Malformed {
            reason: MalformedReason::WrongLength {
                expected: 4,
                got: 5
            },
            ..
        })
    ));
    assert!(matches!(
        MaskedInput::from_bytes(&long.to_bytes(), &config),
        Err(SecAggError::Malformed {
            reason: MalformedReason::WrongLength { .. },
            ..
        })
    ));
    let mut big = y0.clone();
    big.masked[2] = 1 << config.modulus_bits();
    assert!(matches!(
        r.server.receive_masked_input(0, &big),
        Err(SecAggError::EntryOutOfRange { index: 2, .. })
    ));
    for (&u, y) in &ys {
        if u != 7 {
            r.server.receive_masked_input(u, y).unwrap();
        }
    }
    assert_eq!(
        r.server.receive_masked_input(0, &y0).unwrap_err(),
        SecAggError::Duplicate {
            stage: Stage::MaskedInput,
            id: 0
        }
    );
    let requests = r.server.finish_masked_input().unwrap();
    // Client 7 dropped: its late input is refused in the next stage.
    assert!(matches!(
        r.server.receive_masked_input(7, &ys[&7]),
        Err(SecAggError::WrongStage { .. })
    ));

    // Stage 3: a response from a dropped client, an unrequested share, a replay.
    let resp0 = r.clients[0].unmask(&requests[&0]).unwrap();
    let mut flipped = resp0.clone();
    flipped.shares[0].kind = match flipped.shares[0].kind {
        ShareKind::SelfMask => ShareKind::MaskKey,
        ShareKind::MaskKey => ShareKind::SelfMask,
    };
    assert!(matches!(
        r.server.receive_unmask(0, flipped),
        Err(SecAggError::UnexpectedShare { from: 0, .. })
    ));
    let mut from7 = resp0.clone();
    from7.id = 7;
    assert!(matches!(
        r.server.receive_unmask(7, from7),
        Err(SecAggError::NotParticipant { id: 7, .. })
    ));
    r.server.receive_unmask(0, resp0.clone()).unwrap();
    assert!(matches!(
        r.server.receive_unmask(0, resp0.clone()),
        Err(SecAggError::Duplicate { .. })
    ));
    for (&u, q) in &requests {
        if u != 0 {
            let resp = r.clients[u as usize].unmask(q).unwrap();
            r.server.receive_unmask(u, resp).unwrap();
        }
    }
    let out = r.server.finish_unmask().unwrap();
    let surv: Vec<Vec<f64>> = (0..11).map(|_| vec![0.1; 4]).collect();
    assert_eq!(
        out.sum,
        plaintext_sum_quantized(&config, &surv, None).unwrap()
    );

    // Codecs: every truncation of every valid message is refused; counts above the
    // configured bound are refused before allocating.
    let valid: Vec<(u8, Vec<u8>)> = vec![
        (0, m0.to_bytes()),
        (1, keys[&0].to_bytes()),
        (2, s0.to_bytes()),
        (3, incoming[&0].to_bytes()),
        (4, y0.to_bytes()),
        (5, requests[&0].to_bytes()),
        (6, resp0.to_bytes()),
    ];
    for (kind, bytes) in &valid {
        assert!(decode(*kind, bytes, &config).is_ok(), "kind {kind}");
        for cut in 0..bytes.len() {
            assert!(
                decode(*kind, &bytes[..cut], &config).is_err(),
                "kind {kind} cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(*kind, &longer, &config).is_err());
    }
    let mut huge = vec![2u8, 1];
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        NeighbourKeys::from_bytes(&huge, &config),
        Err(SecAggError::Malformed {
            reason: MalformedReason::CountTooLarge { max: 4, .. },
            ..
        })
    ));
    let mut huge_y = vec![5u8, 1, 0, 0, 0, 0];
    huge_y.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(MaskedInput::from_bytes(&huge_y, &config).is_err());

    // Fuzz: random bytes and random mutations of valid messages into every decoder.
    let mut rng = ChaCha20Rng::seed_from_u64(0xf0);
    for i in 0..20_000 {
        let kind = (i % 7) as u8;
        let bytes = if i % 2 == 0 {
            let len = rng.random_range(0..700);
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            if len >= 2 && rng.random_bool(0.7) {
                b[0] = kind + 1;
                b[1] = 1;
            }
            b
        } else {
            let mut b = valid[kind as usize].1.clone();
            for _ in 0..rng.random_range(1..4) {
                let j = rng.random_range(0..b.len());
                b[j] = rng.random();
            }
            b
        };
        let _ = decode(kind, &bytes, &config);
    }
}

fn decode(kind: u8, bytes: &[u8], config: &SecAggConfig) -> Result<(), SecAggError> {
    match kind {
        0 => AdvertiseKeys::from_bytes(bytes, config).map(|_| ()),
        1 => NeighbourKeys::from_bytes(bytes, config).map(|_| ()),
        2 => ShareKeys::from_bytes(bytes, config).map(|_| ()),
        3 => IncomingShares::from_bytes(bytes, config).map(|_| ()),
        4 => MaskedInput::from_bytes(bytes, config).map(|_| ()),
        5 => UnmaskRequest::from_bytes(bytes, config).map(|_| ()),
        _ => UnmaskResponse::from_bytes(bytes, config).map(|_| ()),
    }
}

/// Masked inputs are bit-packed: every entry below `2^b` round-trips, for `b` = 26 and 64
/// (the widest, with the all-ones entry), an upload takes `b` bits per entry, and a width
/// above `b` or non-zero padding bits are refused.
#[test]
fn masked_inputs_are_bit_packed_and_round_trip() {
    use cipherml_mpc::secagg::MaskedInput;
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    for bits in [26u32, 64] {
        let mut params = SecAggParams::recommended(5, 7);
        params.modulus_bits = Some(bits);
        let config = SecAggConfig::new(params).unwrap();
        let mask = config.modulus_mask();
        let mut masked: Vec<u64> = (0..config.vector_len())
            .map(|_| rng.next_u64() & mask)
            .collect();
        masked[0] = mask;
        masked[1] = 0;
        let m = MaskedInput { id: 3, masked };
        let bytes = m.to_bytes();
        let back = MaskedInput::from_bytes(&bytes, &config).unwrap();
        assert_eq!(back.masked, m.masked);
        assert_eq!(back.id, 3);
        // Header, id, length, width byte, then b bits per entry.
        let payload = (bits as usize * config.vector_len()).div_ceil(8);
        assert!(bytes.len() <= payload + 16, "{} bytes", bytes.len());
        if bits == 26 {
            // A width above b.
            let wide = MaskedInput {
                id: 3,
                masked: vec![1 << 40; config.vector_len()],
            };
            assert!(MaskedInput::from_bytes(&wide.to_bytes(), &config).is_err());
            // Non-zero padding bits in the last byte (7 x 26 = 182 bits: 2 spare).
            let mut padded = bytes.clone();
            *padded.last_mut().unwrap() |= 0x80;
            assert!(MaskedInput::from_bytes(&padded, &config).is_err());
        }
    }
}
