//! Federated averaging over secure aggregation (`examples/federated_digits.rs`, compiled
//! here as a module) against the same FedAvg with an exact `f64` weighted mean: every
//! round's securely aggregated mean delta within the quantization error of the exact mean
//! of the same deltas, the secure sum equal to the plain sum of the quantized deltas, the
//! weight total equal to the sample counts of the clients that sent an update, and the
//! final test accuracy within 0.5 percentage points of the plaintext run's and above 0.8.
//!
//! The bound: a client clips its delta `x` to `[-c, c]` and the protocol quantizes it to a
//! level `L` of step `s = 2c / (2^bits - 1)`, so `|L s - c - x| <= s / 2` per entry. The
//! server learns `S = sum_u w_u (L_u s - c)`, hence
//! `|S - sum_u w_u x_u| <= (s / 2) sum_u w_u = (s / 2) W`, and the FedAvg mean `S / W`
//! is within `s / 2 = c / (2^bits - 1)` of the exact weighted mean (each client's error is
//! scaled by its weight, so the error of the mean does not shrink with `n / W`).

#[allow(dead_code)]
#[path = "../examples/federated_digits.rs"]
mod example;

use cipherml::mpc::secagg::{plaintext_sum_quantized, ClientId, DropoutPlan, SecAggError, Stage};
use example::{aggregate, load_digits, run, secagg_config, FedOptions, Mlp, RoundRecord, CLIENTS};

#[test]
fn secure_fedavg_matches_plaintext_fedavg_on_digits() {
    let opts = FedOptions::default();
    let (train, test) = (load_digits("train").unwrap(), load_digits("test").unwrap());
    let mut rounds: Vec<RoundRecord> = Vec::new();
    let report = run(&opts, &train, &test, |r| rounds.push(r.clone())).unwrap();
    let config = &report.config;
    assert_eq!(rounds.len(), opts.rounds);

    // The split: disjoint slices covering the training set, of unequal sizes.
    assert_eq!(report.client_sizes.iter().sum::<usize>(), train.y.len());
    assert!(report.client_sizes.windows(2).all(|w| w[0] < w[1]));

    let step = 2.0 * opts.clip / ((1u64 << opts.bits) - 1) as f64;
    let bound = step / 2.0 + 1e-9;
    let mut stages_seen = Vec::new();
    let mut full_rounds = 0;
    for r in &rounds {
        // Who is summed: exactly the clients that had not dropped by the masked input.
        let survivors = r.plan.survivors(CLIENTS as u32);
        let included: Vec<ClientId> = r.included();
        assert_eq!(included, survivors, "round {}", r.round);
        if survivors.len() == CLIENTS {
            full_rounds += 1;
        }
        for u in 0..CLIENTS as ClientId {
            for s in [
                Stage::AdvertiseKeys,
                Stage::ShareKeys,
                Stage::MaskedInput,
                Stage::Unmask,
            ] {
                if r.plan.dropped_by(u, s) && !stages_seen.contains(&s) {
                    stages_seen.push(s);
                }
            }
        }
        // The weight total is the sample count of the summed clients.
        let w_total: u64 = included
            .iter()
            .map(|&u| report.client_sizes[u as usize] as u64)
            .sum();
        assert_eq!(r.secure_weight, w_total, "round {}", r.round);

        // The exact weighted mean of the same deltas, computed here.
        let mut exact = vec![0.0f64; Mlp::PARAMS];
        for &u in &included {
            let x = r.updates[u as usize].as_ref().unwrap();
            assert_eq!(x.len(), Mlp::PARAMS);
            assert!(x.iter().all(|v| v.abs() <= opts.clip));
            let w = report.client_sizes[u as usize] as f64;
            for (e, v) in exact.iter_mut().zip(x) {
                *e += w * v;
            }
        }
        let mut max_err = 0.0f64;
        let mut moved = 0.0f64;
        for (s, e) in r.secure_sum.iter().zip(&exact) {
            max_err = max_err.max((s / w_total as f64 - e / w_total as f64).abs());
            moved = moved.max((e / w_total as f64).abs());
        }
        assert!(
            max_err <= bound,
            "round {}: secure mean off by {max_err:e} > {bound:e}",
            r.round
        );
        // The comparison is not vacuous: the mean deltas are far larger than the bound.
        assert!(
            moved > 1e3 * bound,
            "round {}: max |mean| {moved:e}",
            r.round
        );

        // Masking is exact: the secure sum is the plain sum of the quantized deltas.
        let inputs: Vec<Vec<f64>> = included
            .iter()
            .map(|&u| r.updates[u as usize].clone().unwrap())
            .collect();
        let weights: Vec<u64> = included.iter().map(|&u| r.weights[u as usize]).collect();
        let raw = plaintext_sum_quantized(config, &inputs, Some(&weights)).unwrap();
        let reference = config.dequantize_sum(&raw, 0);
        assert_eq!(raw[config.dim()], w_total);
        for (s, q) in r.secure_sum.iter().zip(&reference) {
            assert!((s - q).abs() <= 1e-9, "round {}: {s} vs {q}", r.round);
        }
    }
    assert!(full_rounds >= 1, "no round without dropouts");
    assert_eq!(
        stages_seen.len(),
        4,
        "dropouts at every stage: {stages_seen:?}"
    );

    // Accuracy: training happened, and the secure run tracks the plaintext one.
    assert!(report.initial_accuracy < 0.3, "{}", report.initial_accuracy);
    assert!(report.secure_accuracy > 0.8, "{}", report.secure_accuracy);
    assert!(
        (report.secure_accuracy - report.plain_accuracy).abs() <= 0.005,
        "secure {} vs plaintext {}",
        report.secure_accuracy,
        report.plain_accuracy
    );
}

#[test]
fn aggregate_sums_only_the_updates_that_arrive_and_refuses_below_the_threshold() {
    let opts = FedOptions::default();
    let dim = 5;
    let config = secagg_config(dim, 100, &opts).unwrap();
    let updates: Vec<Option<Vec<f64>>> = (0..CLIENTS)
        .map(|u| {
            // Clients 2 and 6 send nothing; the plan only says when 2 drops.
            (u != 2 && u != 6).then(|| {
                (0..dim)
                    .map(|j| (u as f64 - 4.5) / 10.0 + j as f64 / 20.0)
                    .collect()
            })
        })
        .collect();
    let weights: Vec<u64> = (0..CLIENTS as u64).map(|u| u + 1).collect();
    let plan = DropoutPlan {
        before_share_keys: vec![2],
        before_unmask: vec![8],
        ..DropoutPlan::default()
    };
    let (sum, total) = aggregate(&config, &updates, &weights, 0, &plan).unwrap();
    let expected_total: u64 = (0..CLIENTS)
        .filter(|&u| u != 2 && u != 6)
        .map(|u| weights[u])
        .sum();
    assert_eq!(total, expected_total);
    let step = 2.0 * opts.clip / ((1u64 << opts.bits) - 1) as f64;
    for j in 0..dim {
        let exact: f64 = (0..CLIENTS)
            .filter_map(|u| updates[u].as_ref().map(|x| weights[u] as f64 * x[j]))
            .sum();
        assert!(
            (sum[j] - exact).abs() <= step / 2.0 * total as f64 + 1e-9,
            "entry {j}: {} vs {exact}",
            sum[j]
        );
    }

    // Fewer survivors than the Shamir threshold: an error, not a wrong sum.
    let few: Vec<Option<Vec<f64>>> = updates
        .iter()
        .enumerate()
        .map(|(u, x)| {
            if u < config.t() as usize - 1 {
                x.clone()
            } else {
                None
            }
        })
        .collect();
    let err = aggregate(&config, &few, &weights, 1, &DropoutPlan::none()).unwrap_err();
    assert!(
        matches!(
            err,
            cipherml::Error::SecAgg(SecAggError::TooFewSurvivors { .. })
        ),
        "{err:?}"
    );
}
