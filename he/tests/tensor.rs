//! Packed tensor kernels against ndarray references: CKKS within a stated error, BFV
//! coefficient-encoded kernels exactly.

use std::sync::Arc;

use cipherml_he::bfv::{self, BfvParametersLiteral, PlaintextModulus};
use cipherml_he::ckks::{self, CkksParameters, CkksParametersLiteral};
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml_he::tensor::*;
use ndarray::{Array1, Array2, Array3, Array4, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

struct Ckks {
    params: Arc<CkksParameters>,
    sk: Arc<SecretKey>,
    enc: ckks::Encoder,
    encryptor: ckks::Encryptor,
    dec: ckks::Decryptor,
    ev: ckks::Evaluator,
    rlk: RelinKey,
    rng: ChaCha20Rng,
}

fn ckks_setup(lit: &CkksParametersLiteral, insecure: bool) -> Ckks {
    let params = if insecure {
        CkksParameters::new_insecure(lit).unwrap()
    } else {
        CkksParameters::new(lit).unwrap()
    };
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    Ckks {
        enc: ckks::Encoder::new(&params),
        encryptor: ckks::Encryptor::new(&params, pk).unwrap(),
        dec: ckks::Decryptor::new(&params, sk.clone()).unwrap(),
        ev: ckks::Evaluator::new(&params),
        params,
        sk,
        rlk,
        rng,
    }
}

fn deep() -> CkksParametersLiteral {
    CkksParametersLiteral {
        degree: 2048,
        ciphertext_moduli_bits: vec![55, 40, 40, 40, 40],
        special_moduli_bits: vec![55],
        scale_bits: 40,
    }
}

fn random_matrix(rng: &mut ChaCha20Rng, r: usize, c: usize) -> Array2<f64> {
    Array2::from_shape_fn((r, c), |_| rng.random_range(-1.0..1.0))
}

fn max_err(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn apply(c: &mut Ckks, map: &LinearMap, x: &CkksTensor) -> CkksTensor {
    let gk = GaloisKeys::new(&c.sk, &map.galois_elements(&c.ev), &mut c.rng).unwrap();
    let prepared = map.encode(&c.enc, x.ct.level()).unwrap();
    prepared.apply(&c.ev, x, &gk).unwrap()
}

#[test]
fn dense_layers_match_ndarray() {
    let mut c = ckks_setup(&deep(), true);
    // (rows, cols): fewer outputs than inputs, more outputs than inputs, square, odd sizes.
    for (rows, cols) in [(10usize, 30usize), (64, 16), (32, 32), (7, 100), (1, 5)] {
        let w = random_matrix(&mut c.rng, rows, cols);
        let b: Vec<f64> = (0..rows).map(|_| c.rng.random_range(-1.0..1.0)).collect();
        let x = ArrayD::from_shape_fn(IxDyn(&[cols]), |_| c.rng.random_range(-1.0..1.0));
        let cx = CkksTensor::encrypt(&c.encryptor, &x, &mut c.rng).unwrap();
        let map = LinearMap::dense(w.view(), Some(&b), cx.period()).unwrap();
        let y = apply(&mut c, &map, &cx);
        assert_eq!(y.shape(), &[rows]);
        assert_eq!(y.ct.level(), cx.ct.level() - 1);
        let x1 = Array1::from_vec(x.iter().copied().collect());
        let want = (w.dot(&x1) + Array1::from_vec(b.clone())).into_dyn();
        let got = y.decrypt(&c.dec).unwrap();
        let err = max_err(&got, &want);
        assert!(err < 1e-5, "({rows}x{cols}): error {err}");
        // The output is replicated with its period: every slot j holds y[j mod period].
        let slots = c.dec.decrypt_f64(&y.ct).unwrap();
        for j in 0..c.params.slots() {
            let r = j % y.period();
            let v = if r < rows { want[[r]] } else { 0.0 };
            assert!((slots[j] - v).abs() < 1e-5, "slot {j}");
        }
    }
}

#[test]
fn chained_network_dense_square_dense() {
    let mut c = ckks_setup(&deep(), true);
    let w1 = random_matrix(&mut c.rng, 16, 40);
    let w2 = random_matrix(&mut c.rng, 4, 16);
    let x = ArrayD::from_shape_fn(IxDyn(&[40]), |_| c.rng.random_range(-0.5..0.5));
    let cx = CkksTensor::encrypt(&c.encryptor, &x, &mut c.rng).unwrap();
    let m1 = LinearMap::dense(w1.view(), None, cx.period()).unwrap();
    let h = apply(&mut c, &m1, &cx).square(&c.ev, &c.rlk).unwrap();
    let m2 = LinearMap::dense(w2.view(), None, h.period()).unwrap();
    let y = apply(&mut c, &m2, &h);
    let x1 = Array1::from_vec(x.iter().copied().collect());
    let h1 = w1.dot(&x1).mapv(|v| v * v);
    let want = w2.dot(&h1).into_dyn();
    let err = max_err(&y.decrypt(&c.dec).unwrap(), &want);
    assert!(err < 1e-4, "error {err}");
}

/// Direct convolution, independent of `conv2d_matrix`.
fn conv_ref(x: &Array3<f64>, w: &Array4<f64>, stride: usize, pad: usize) -> Array3<f64> {
    let (c, h, wd) = x.dim();
    let (o, _, kh, kw) = w.dim();
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (wd + 2 * pad - kw) / stride + 1;
    let mut out = Array3::zeros((o, ho, wo));
    for oc in 0..o {
        for y in 0..ho {
            for xx in 0..wo {
                let mut acc = 0.0;
                for ic in 0..c {
                    for p in 0..kh {
                        for q in 0..kw {
                            let iy = (y * stride + p) as i64 - pad as i64;
                            let ix = (xx * stride + q) as i64 - pad as i64;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                acc += w[[oc, ic, p, q]] * x[[ic, iy as usize, ix as usize]];
                            }
                        }
                    }
                }
                out[[oc, y, xx]] = acc;
            }
        }
    }
    out
}

#[test]
fn conv2d_and_avg_pool_match_direct_computation() {
    let mut c = ckks_setup(&deep(), true);
    for (cin, o, h, k, stride, pad) in [
        (1usize, 4usize, 8usize, 3usize, 1usize, 1usize),
        (2, 3, 6, 3, 2, 0),
    ] {
        let x = Array3::from_shape_fn((cin, h, h), |_| c.rng.random_range(-1.0..1.0));
        let w = Array4::from_shape_fn((o, cin, k, k), |_| c.rng.random_range(-1.0..1.0));
        let (m, oshape) = conv2d_matrix(w.view(), (cin, h, h), stride, pad).unwrap();
        let cx = CkksTensor::encrypt(&c.encryptor, &x.clone().into_dyn(), &mut c.rng).unwrap();
        let map = LinearMap::new(m.view(), None, cx.period()).unwrap();
        let y = apply(&mut c, &map, &cx);
        let want = conv_ref(&x, &w, stride, pad);
        assert_eq!(want.dim(), oshape);
        let got = y
            .reshape(&[oshape.0, oshape.1, oshape.2])
            .unwrap()
            .decrypt(&c.dec)
            .unwrap();
        let err = max_err(&got, &want.into_dyn());
        assert!(err < 1e-5, "conv error {err}");
    }
    // 2x2 average pooling of (2, 4, 4).
    let x = Array3::from_shape_fn((2, 4, 4), |_| c.rng.random_range(-1.0..1.0));
    let (m, (pc, ph, pw)) = avg_pool_matrix((2, 4, 4), 2).unwrap();
    let cx = CkksTensor::encrypt(&c.encryptor, &x.clone().into_dyn(), &mut c.rng).unwrap();
    let y = apply(
        &mut c,
        &LinearMap::new(m.view(), None, cx.period()).unwrap(),
        &cx,
    );
    let got = y.reshape(&[pc, ph, pw]).unwrap().decrypt(&c.dec).unwrap();
    let want = Array3::from_shape_fn((2, 2, 2), |(ch, i, j)| {
        (x[[ch, 2 * i, 2 * j]]
            + x[[ch, 2 * i + 1, 2 * j]]
            + x[[ch, 2 * i, 2 * j + 1]]
            + x[[ch, 2 * i + 1, 2 * j + 1]])
            / 4.0
    });
    assert!(max_err(&got, &want.into_dyn()) < 1e-5);
}

#[test]
fn tensor_elementwise_ops_and_sums() {
    let mut c = ckks_setup(&deep(), true);
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 5]), |_| c.rng.random_range(-1.0..1.0));
    let b = ArrayD::from_shape_fn(IxDyn(&[3, 5]), |_| c.rng.random_range(-1.0..1.0));
    let cx = CkksTensor::encrypt(&c.encryptor, &x, &mut c.rng).unwrap();
    assert_eq!(cx.period(), 16);
    let got = cx.add_plain(&c.ev, &b).unwrap().decrypt(&c.dec).unwrap();
    assert!(max_err(&got, &(&x + &b)) < 1e-6);
    let sq = cx.square(&c.ev, &c.rlk).unwrap().decrypt(&c.dec).unwrap();
    assert!(max_err(&sq, &x.mapv(|v| v * v)) < 1e-6);
    let p = cx
        .poly(&c.ev, &[0.5, 0.25, -0.125], &c.rlk)
        .unwrap()
        .decrypt(&c.dec)
        .unwrap();
    assert!(max_err(&p, &x.mapv(|v| 0.5 + 0.25 * v - 0.125 * v * v)) < 1e-6);
    let gk = GaloisKeys::new(&c.sk, &c.ev.galois_elements_power_of_two(), &mut c.rng).unwrap();
    let s = cx.sum(&c.ev, &gk).unwrap().decrypt(&c.dec).unwrap();
    assert!((s[[0]] - x.sum()).abs() < 1e-6);
    assert!(cx.reshape(&[4, 4]).is_err());
    assert!(cx.add_plain(&c.ev, &ArrayD::zeros(IxDyn(&[15]))).is_err());
}

#[test]
fn matvec_784x128_at_n8192() {
    let mut c = ckks_setup(&CkksParametersLiteral::n8192(), false);
    let w = random_matrix(&mut c.rng, 128, 784);
    let x = ArrayD::from_shape_fn(IxDyn(&[784]), |_| c.rng.random_range(0.0..1.0));
    let cx = CkksTensor::encrypt(&c.encryptor, &x, &mut c.rng).unwrap();
    let map = LinearMap::dense(w.view(), None, cx.period()).unwrap();
    assert!(
        map.rotation_steps().len() <= 26,
        "{:?}",
        map.rotation_steps()
    );
    let y = apply(&mut c, &map, &cx);
    let x1 = Array1::from_vec(x.iter().copied().collect());
    let err = max_err(&y.decrypt(&c.dec).unwrap(), &w.dot(&x1).into_dyn());
    assert!(err < 1e-4, "error {err}");
}

#[test]
fn structural_rotation_steps_cover_any_sparsity_and_depend_on_shapes_only() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let dense = random_matrix(&mut rng, 48, 100);
    // A banded matrix: most diagonals are zero, so fewer rotations are used.
    let banded = Array2::from_shape_fn((48, 100), |(r, c)| {
        if c >= r && c < r + 3 {
            dense[[r, c]]
        } else {
            0.0
        }
    });
    let zero = Array2::<f64>::zeros((48, 100));
    let d = LinearMap::dense(dense.view(), None, 128).unwrap();
    let b = LinearMap::dense(banded.view(), None, 128).unwrap();
    let z = LinearMap::dense(zero.view(), None, 128).unwrap();
    assert!(b.rotation_steps().len() < d.rotation_steps().len());
    assert_eq!(d.structural_rotation_steps(), b.structural_rotation_steps());
    assert_eq!(d.structural_rotation_steps(), z.structural_rotation_steps());
    for m in [&d, &b, &z] {
        let all = m.structural_rotation_steps();
        assert!(m.rotation_steps().iter().all(|s| all.contains(s)));
    }
    assert_eq!(d.rotation_steps(), d.structural_rotation_steps());
}

fn bfv_pow2() -> bfv::BfvParametersLiteral {
    BfvParametersLiteral {
        degree: 4096,
        ciphertext_moduli_bits: vec![36, 36],
        special_moduli_bits: vec![37],
        plaintext: PlaintextModulus::PowerOfTwo { bits: 20 },
    }
}

/// Seeded symmetric encryptions of `pts` sent as a client sends them, only at `window`
/// (checked against the exact size), decoded with zeros elsewhere, put through `apply`
/// (the layer) and decrypted.
fn through_window(
    (params, dec): (&Arc<bfv::BfvParameters>, &bfv::Decryptor),
    pts: &[bfv::Plaintext],
    window: bfv::CoeffWindow,
    rng: &mut ChaCha20Rng,
    apply: impl Fn(&[bfv::Ciphertext]) -> Vec<bfv::Ciphertext>,
) -> Vec<bfv::Plaintext> {
    let cts: Vec<_> = pts
        .iter()
        .map(|p| {
            let ct = dec.encrypt_symmetric(p, rng).unwrap();
            let bytes = ct.to_bytes_window(params, window).unwrap();
            let size = cipherml_he::serialize::window_ciphertext_size(params, window);
            assert_eq!(bytes.len(), size);
            bfv::Ciphertext::from_bytes_window(params, &bytes, window).unwrap()
        })
        .collect();
    apply(&cts)
        .iter()
        .map(|c| dec.decrypt(c).unwrap())
        .collect()
}

/// A weight in `[-cap, cap]`, not zero.
fn nonzero(rng: &mut ChaCha20Rng, cap: i64) -> i64 {
    let v = rng.random_range(-cap..cap);
    if v >= 0 {
        v + 1
    } else {
        v
    }
}

/// `window` less its first coefficient (or its last, if it is the whole ring).
fn shrunk(n: usize, window: bfv::CoeffWindow) -> bfv::CoeffWindow {
    if window.is_full() {
        bfv::CoeffWindow::new(n, 0, n - 1).unwrap()
    } else {
        bfv::CoeffWindow::new(n, (window.start() + 1) % n, window.len() - 1).unwrap()
    }
}

#[test]
fn bfv_coefficient_matvec_is_exact() {
    let params = bfv::BfvParameters::new(&bfv_pow2()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let enc = bfv::Encoder::new(&params);
    let encryptor = bfv::Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
    let dec = bfv::Decryptor::new(&params, sk).unwrap();
    let ev = bfv::Evaluator::new(&params);
    let t = 1i64 << 20;
    // Several row blocks (rows * cols > N) and several column chunks (cols > N); then
    // chunks chosen shorter than N (a last one shorter still), more rows per block.
    let cases = [
        (10usize, 64usize, None),
        (100, 100, None),
        (3, 5000, None),
        (20, 3750, Some(1875usize)),
        (7, 1000, Some(300)),
    ];
    for (rows, cols, chunk) in cases {
        // Non-zero weights: every coefficient of the window then counts.
        let w = Array2::from_shape_fn((rows, cols), |_| nonzero(&mut rng, 8));
        let x: Vec<i64> = (0..cols).map(|_| rng.random_range(-100i64..100)).collect();
        let mv = match chunk {
            None => CoeffMatVec::new(&enc, w.view()).unwrap(),
            Some(c) => {
                let mv = CoeffMatVec::new_chunked(&enc, w.view(), 8, c).unwrap();
                assert_eq!(mv.input_chunks(), cols.div_ceil(c));
                mv
            }
        };
        let cts: Vec<_> = mv
            .encode_input(&enc, &x)
            .unwrap()
            .iter()
            .map(|p| encryptor.encrypt(p, &mut rng).unwrap())
            .collect();
        let out = mv.apply(&ev, &cts).unwrap();
        let pts: Vec<_> = out.iter().map(|c| dec.decrypt(c).unwrap()).collect();
        let got = mv.decode_output(&enc, &pts).unwrap();
        let want: Vec<i64> = (0..rows)
            .map(|i| {
                let s: i64 = (0..cols).map(|j| w[[i, j]] * x[j]).sum();
                let r = s.rem_euclid(t);
                if r > t / 2 {
                    r - t
                } else {
                    r
                }
            })
            .collect();
        assert_eq!(got, want, "{rows}x{cols}");
        // The input sent only at its window gives the same outputs; the window of the
        // strided layout is the weight block plus m - 1 (contiguous: (2 m - 1) chunk).
        let n = params.degree();
        let window = mv.input_window();
        let c = chunk.unwrap_or(cols).min(n);
        let m = rows.div_ceil(rows.div_ceil(n / c));
        let expected = if chunk.is_some() {
            c * m + m - 1
        } else {
            (2 * m - 1) * c
        };
        assert_eq!(window.len(), expected.min(n), "{rows}x{cols}");
        let pts = mv.encode_input(&enc, &x).unwrap();
        let run = |window, rng: &mut ChaCha20Rng| {
            let out = through_window((&params, &dec), &pts, window, rng, |cts| {
                mv.apply(&ev, cts).unwrap()
            });
            mv.decode_output(&enc, &out).unwrap()
        };
        assert_eq!(run(window, &mut rng), want, "{rows}x{cols} windowed");
        // One coefficient fewer and some output is wrong: the window is tight.
        assert_ne!(
            run(shrunk(n, window), &mut rng),
            want,
            "{rows}x{cols} shrunk"
        );
    }
}

#[test]
fn bfv_coefficient_conv2d_is_exact() {
    let params = bfv::BfvParameters::new(&bfv_pow2()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let enc = bfv::Encoder::new(&params);
    let encryptor = bfv::Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
    let dec = bfv::Decryptor::new(&params, sk).unwrap();
    let ev = bfv::Evaluator::new(&params);
    // (C, O, H, k, stride, pad, output ciphertexts); the third case needs two channel
    // groups (C * 34 * 34 > 4096). Output channels sit at the input's length, their
    // products overlapping where no output is read: LeNet's second convolution (6 -> 16,
    // 5x5 on 12x12) packs 4 to a ciphertext at N = 4096 (products kept apart: 2), the
    // last one's product wrapping past N; the stride-2 case packs 4 (apart: 2).
    for (c, o, h, k, stride, pad, blocks) in [
        (1usize, 8usize, 8usize, 3usize, 1usize, 1usize, 1usize),
        (3, 2, 9, 3, 2, 0, 1),
        (5, 2, 32, 5, 1, 1, 2),
        (6, 16, 12, 5, 1, 0, 4),
        (2, 8, 20, 3, 2, 1, 2),
    ] {
        let x = Array3::from_shape_fn((c, h, h), |_| rng.random_range(-50i64..50));
        let w = Array4::from_shape_fn((o, c, k, k), |_| nonzero(&mut rng, 5));
        let conv = CoeffConv2d::new(&enc, w.view(), (h, h), pad, stride).unwrap();
        assert_eq!(conv.output_blocks(), blocks, "C={c} O={o} H={h}");
        let cts: Vec<_> = conv
            .encode_input(&enc, x.view())
            .unwrap()
            .iter()
            .map(|p| encryptor.encrypt(p, &mut rng).unwrap())
            .collect();
        let out = conv.apply(&ev, &cts).unwrap();
        let pts: Vec<_> = out.iter().map(|ct| dec.decrypt(ct).unwrap()).collect();
        let got = conv.decode_output(&enc, &pts).unwrap();
        let want =
            conv_ref(&x.mapv(|v| v as f64), &w.mapv(|v| v as f64), stride, pad).mapv(|v| v as i64);
        assert_eq!(got, want, "C={c} O={o} H={h} k={k} s={stride} p={pad}");
        // Sent only at the window (output channels interleaved: about the kernel's reach
        // times the channels of a block), the outputs are the same; one coefficient fewer
        // and some output is wrong.
        let n = params.degree();
        let window = conv.input_window();
        let pts = conv.encode_input(&enc, x.view()).unwrap();
        let run = |window, rng: &mut ChaCha20Rng| {
            let out = through_window((&params, &dec), &pts, window, rng, |cts| {
                conv.apply(&ev, cts).unwrap()
            });
            conv.decode_output(&enc, &out).unwrap()
        };
        assert_eq!(run(window, &mut rng), want, "C={c} O={o} windowed");
        assert_ne!(run(shrunk(n, window), &mut rng), want, "C={c} O={o} shrunk");
    }
    // LeNet's first convolution (1 -> 6, 5x5 on 28x28) at N = 8192: 6 channels of 784
    // interleaved, a window of 4709 coefficients (the whole ring without interleaving).
    let lit = BfvParametersLiteral {
        degree: 8192,
        ciphertext_moduli_bits: vec![41; 4],
        special_moduli_bits: vec![20],
        plaintext: PlaintextModulus::PowerOfTwo { bits: 40 },
    };
    let p8 = bfv::BfvParameters::new(&lit).unwrap();
    let w = Array4::<i64>::zeros((6, 1, 5, 5));
    let conv = CoeffConv2d::new(&bfv::Encoder::new(&p8), w.view(), (28, 28), 0, 1).unwrap();
    assert_eq!(conv.input_window().len(), 784 * 6 + 5);
}

#[test]
fn batched_dense_layer_and_bfv_simd_tensors() {
    let mut c = ckks_setup(&deep(), true);
    let w = random_matrix(&mut c.rng, 6, 12);
    let xs: Vec<ArrayD<f64>> = (0..3)
        .map(|_| ArrayD::from_shape_fn(IxDyn(&[12]), |_| c.rng.random_range(-1.0..1.0)))
        .collect();
    let cts: Vec<CkksTensor> = xs
        .iter()
        .map(|x| CkksTensor::encrypt(&c.encryptor, x, &mut c.rng).unwrap())
        .collect();
    let map = LinearMap::dense(w.view(), None, 16).unwrap();
    let gk = GaloisKeys::new(&c.sk, &map.galois_elements(&c.ev), &mut c.rng).unwrap();
    let prepared = map.encode(&c.enc, cts[0].ct.level()).unwrap();
    let ys = prepared.apply_batch(&c.ev, &cts, &gk).unwrap();
    for (x, y) in xs.iter().zip(&ys) {
        let x1 = Array1::from_vec(x.iter().copied().collect());
        assert!(max_err(&y.decrypt(&c.dec).unwrap(), &w.dot(&x1).into_dyn()) < 1e-5);
    }

    let params = bfv::BfvParameters::new(&BfvParametersLiteral::n4096()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let enc = bfv::Encoder::new(&params);
    let encryptor = bfv::Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
    let dec = bfv::Decryptor::new(&params, sk.clone()).unwrap();
    let ev = bfv::Evaluator::new(&params);
    let rlk = RelinKey::new(&sk, &mut rng);
    // 5000 elements: two ciphertexts.
    let a = ArrayD::from_shape_fn(IxDyn(&[50, 100]), |_| rng.random_range(-150i64..150));
    let b = ArrayD::from_shape_fn(IxDyn(&[50, 100]), |_| rng.random_range(-150i64..150));
    let ca = BfvTensor::encrypt(&enc, &encryptor, &a, &mut rng).unwrap();
    let cb = BfvTensor::encrypt(&enc, &encryptor, &b, &mut rng).unwrap();
    assert_eq!(ca.cts.len(), 2);
    assert_eq!(
        ca.add(&ev, &cb).unwrap().decrypt(&enc, &dec).unwrap(),
        &a + &b
    );
    assert_eq!(
        ca.mul(&ev, &cb, &rlk).unwrap().decrypt(&enc, &dec).unwrap(),
        &a * &b
    );
    assert_eq!(
        ca.mul_plain(&ev, &enc, &b)
            .unwrap()
            .decrypt(&enc, &dec)
            .unwrap(),
        &a * &b
    );
    assert!(ca
        .add(
            &ev,
            &BfvTensor::encrypt(&enc, &encryptor, &ArrayD::zeros(IxDyn(&[3])), &mut rng).unwrap()
        )
        .is_err());
}
