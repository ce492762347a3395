//! Micro-benchmark of RNS base conversion (developer tool).
use cipherml::he::math::primes::ntt_primes;
use cipherml::he::math::{BaseConverter, Prime, RnsBasis};
fn main() {
    let n = 8192;
    for (kb, mb) in [
        (vec![40u32, 40], vec![60u32, 40, 40, 39, 39]),
        (vec![44], vec![43, 43, 44, 44, 44]),
        (vec![39, 39], vec![60, 40, 40]),
    ] {
        let mut used = vec![];
        let mut mk = |bits: &[u32]| {
            RnsBasis::new(
                bits.iter()
                    .map(|&b| {
                        let p = ntt_primes(b, n, 1, &used).unwrap()[0];
                        used.push(p);
                        Prime::new(p, n).unwrap()
                    })
                    .collect(),
            )
        };
        let from = mk(&kb);
        let to = mk(&mb);
        let conv = BaseConverter::new(&from, &to);
        let input: Vec<u64> = (0..kb.len() * n)
            .map(|i| (i as u64 * 2654435761) % from.modulus(i / n).value())
            .collect();
        let mut out = vec![0u64; mb.len() * n];
        let mut best = f64::MAX;
        for _ in 0..200 {
            let t = std::time::Instant::now();
            conv.convert(&input, &mut out, n, false);
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
        }
        println!(
            "{} -> {}: {:.1} us ({:.2} ns/coeff/output)",
            kb.len(),
            mb.len(),
            best,
            best * 1e3 / (n * mb.len()) as f64
        );
    }
}
