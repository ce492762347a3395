//! The benchmark networks of BENCHMARKS.md with random weights (He initialization), for
//! timing and for checking private execution against the plaintext reference.

use ndarray::{Array1, Array2, Array4};
use rand::{Rng, RngCore};

use super::{Join, Layer, Sequential};

fn dense<R: RngCore>(rng: &mut R, inp: usize, out: usize) -> Layer {
    let s = (2.0 / inp as f64).sqrt();
    Layer::Dense {
        weight: Array2::from_shape_fn((out, inp), |_| rng.random_range(-s..s)),
        bias: Array1::from_shape_fn(out, |_| rng.random_range(-0.1..0.1)),
    }
}

fn conv<R: RngCore>(rng: &mut R, c: usize, o: usize, k: usize, stride: usize) -> Layer {
    conv_padded(rng, c, o, k, stride, 0)
}

fn conv_padded<R: RngCore>(
    rng: &mut R,
    c: usize,
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Layer {
    conv_scaled(rng, c, o, k, stride, padding, 1.0)
}

/// A convolution with weights uniform in `+-factor sqrt(2 / fan_in)`.
fn conv_scaled<R: RngCore>(
    rng: &mut R,
    c: usize,
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
    factor: f64,
) -> Layer {
    let s = factor * (2.0 / (c * k * k) as f64).sqrt();
    Layer::Conv2d {
        weight: Array4::from_shape_fn((o, c, k, k), |_| rng.random_range(-s..s)),
        bias: Array1::from_shape_fn(o, |_| rng.random_range(-0.1..0.1)),
        stride,
        padding,
    }
}

fn pool() -> Layer {
    Layer::MaxPool {
        kernel: 2,
        stride: 2,
    }
}

/// A (SecureML MLP): FC128-ReLU-FC128-ReLU-FC10 on 28x28.
pub fn network_a<R: RngCore>(rng: &mut R) -> Sequential {
    Sequential::new(vec![1, 28, 28])
        .add(Layer::Flatten)
        .add(dense(rng, 784, 128))
        .add(Layer::Relu)
        .add(dense(rng, 128, 128))
        .add(Layer::Relu)
        .add(dense(rng, 128, 10))
}

fn conv_net<R: RngCore>(rng: &mut R, c1: usize, c2: usize, fc: usize) -> Sequential {
    Sequential::new(vec![1, 28, 28])
        .add(conv(rng, 1, c1, 5, 1))
        .add(pool())
        .add(Layer::Relu)
        .add(conv(rng, c1, c2, 5, 1))
        .add(pool())
        .add(Layer::Relu)
        .add(Layer::Flatten)
        .add(dense(rng, c2 * 16, fc))
        .add(Layer::Relu)
        .add(dense(rng, fc, 10))
}

/// B: Conv16 5x5-MaxPool-ReLU-Conv16 5x5-MaxPool-ReLU-FC100-ReLU-FC10.
pub fn network_b<R: RngCore>(rng: &mut R) -> Sequential {
    conv_net(rng, 16, 16, 100)
}

/// C: as B with Conv20, Conv50 and FC500.
pub fn network_c<R: RngCore>(rng: &mut R) -> Sequential {
    conv_net(rng, 20, 50, 500)
}

/// D: Conv5 5x5 stride 2-ReLU-FC100-ReLU-FC10.
pub fn network_d<R: RngCore>(rng: &mut R) -> Sequential {
    Sequential::new(vec![1, 28, 28])
        .add(conv(rng, 1, 5, 5, 2))
        .add(Layer::Relu)
        .add(Layer::Flatten)
        .add(dense(rng, 5 * 12 * 12, 100))
        .add(Layer::Relu)
        .add(dense(rng, 100, 10))
}

/// The LeNet-style CNN of the CrypTen comparison: conv 6@5x5, ReLU, max-pool, conv 16@5x5,
/// ReLU, max-pool, FC 256-120-84-10.
pub fn lenet<R: RngCore>(rng: &mut R) -> Sequential {
    Sequential::new(vec![1, 28, 28])
        .add(conv(rng, 1, 6, 5, 1))
        .add(Layer::Relu)
        .add(pool())
        .add(conv(rng, 6, 16, 5, 1))
        .add(Layer::Relu)
        .add(pool())
        .add(Layer::Flatten)
        .add(dense(rng, 256, 120))
        .add(Layer::Relu)
        .add(dense(rng, 120, 84))
        .add(Layer::Relu)
        .add(dense(rng, 84, 10))
}

/// A tiny ResNet-style CNN on 28x28: conv 8@5x5, max-pool, ReLU, one residual block
/// `x + conv 8@3x3 (pad 1) - ReLU - conv 8@3x3 (pad 1)`, ReLU, 2x2 average pool, FC 288-10.
/// Not one of the benchmark networks of [`all`].
pub fn resnet_tiny<R: RngCore>(rng: &mut R) -> Sequential {
    Sequential::new(vec![1, 28, 28])
        .add(conv(rng, 1, 8, 5, 1))
        .add(pool())
        .add(Layer::Relu)
        .add(Layer::Residual {
            body: vec![
                conv_padded(rng, 8, 8, 3, 1, 1),
                Layer::Relu,
                conv_padded(rng, 8, 8, 3, 1, 1),
            ],
        })
        .add(Layer::Relu)
        .add(Layer::AvgPool {
            kernel: 2,
            stride: 2,
        })
        .add(Layer::Flatten)
        .add(dense(rng, 8 * 6 * 6, 10))
}

/// The factor on the second convolution of each [`resnet20`] block, so that the residual
/// sums stay of the order of one through nine blocks.
const RESNET_BODY_FACTOR: f64 = 0.5;

/// A basic block of [`resnet20`]: `ReLU(body(x) + shortcut(x))` with
/// `body = conv3x3 (stride, pad 1) - ReLU - conv3x3 (pad 1)`; the shortcut is the identity
/// if `c == o` (a [`Layer::Residual`]), else a 1x1 convolution with the block's stride (a
/// projection: [`Layer::Branches`] joined by [`Join::Add`]).
fn basic_block<R: RngCore>(rng: &mut R, c: usize, o: usize, stride: usize) -> [Layer; 2] {
    let body = vec![
        conv_padded(rng, c, o, 3, stride, 1),
        Layer::Relu,
        conv_scaled(rng, o, o, 3, 1, 1, RESNET_BODY_FACTOR),
    ];
    let block = if c == o && stride == 1 {
        Layer::Residual { body }
    } else {
        Layer::Branches {
            branches: vec![body, vec![conv(rng, c, o, 1, stride)]],
            join: Join::Add,
        }
    };
    [block, Layer::Relu]
}

/// ResNet-20 for CIFAR-size inputs `(3, 32, 32)` (He et al. 2016, section 4.2, without
/// batch normalization): a stem conv 16@3x3 (pad 1) and ReLU; three stages of three basic
/// blocks with 16, 32 and 64 channels, each block `ReLU(x + conv3x3 - ReLU - conv3x3)`, the
/// first block of stages 2 and 3 with stride 2 and a 1x1 stride-2 projection shortcut
/// ([`Layer::Branches`] joined by [`Join::Add`]); global average pooling and FC 64-10.
/// 20 weighted layers (19 convolutions and the FC) plus the 2 projection convolutions, 19
/// ReLUs, about 0.27 M weights and 41 M multiply-adds.
///
/// The weights are random (He-style, the second convolution of each block scaled by 1/2 so
/// the residual sums stay of the order of one): for timing and for checking private
/// execution against [`Sequential::predict`], not for accuracy. Not in [`all`] (its private
/// inference takes seconds, not milliseconds); the bench measures it as `infer.resnet20`.
pub fn resnet20<R: RngCore>(rng: &mut R) -> Sequential {
    let mut model = Sequential::new(vec![3, 32, 32])
        .add(conv_padded(rng, 3, 16, 3, 1, 1))
        .add(Layer::Relu);
    let mut c = 16;
    for (stage, o) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..3 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            for layer in basic_block(rng, c, o, stride) {
                model = model.add(layer);
            }
            c = o;
        }
    }
    model.add(Layer::GlobalAvgPool).add(dense(rng, 64, 10))
}

/// All benchmark networks with their names.
pub fn all<R: RngCore>(rng: &mut R) -> Vec<(&'static str, Sequential)> {
    vec![
        ("net_a", network_a(rng)),
        ("net_b", network_b(rng)),
        ("net_c", network_c(rng)),
        ("net_d", network_d(rng)),
        ("lenet", lenet(rng)),
    ]
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    /// Counts the layers matching `f`, inside residual bodies and branches too.
    fn count(layers: &[Layer], f: &dyn Fn(&Layer) -> bool) -> usize {
        layers
            .iter()
            .map(|l| {
                usize::from(f(l))
                    + match l {
                        Layer::Residual { body } => count(body, f),
                        Layer::Branches { branches, .. } => {
                            branches.iter().map(|b| count(b, f)).sum()
                        }
                        _ => 0,
                    }
            })
            .sum()
    }

    #[test]
    fn resnet20_architecture_and_activations() {
        let mut rng = ChaCha20Rng::seed_from_u64(20);
        let model = resnet20(&mut rng);
        let layers = model.layers();
        assert_eq!(count(layers, &|l| matches!(l, Layer::Relu)), 19);
        let is_conv = |l: &Layer| matches!(l, Layer::Conv2d { .. });
        assert_eq!(count(layers, &is_conv), 21);
        let projection = |l: &Layer| matches!(l, Layer::Conv2d { weight, stride: 2, padding: 0, .. } if weight.dim().2 == 1);
        assert_eq!(count(layers, &projection), 2);
        assert_eq!(count(layers, &|l| matches!(l, Layer::Residual { .. })), 7);
        assert_eq!(
            count(layers, &|l| matches!(
                l,
                Layer::Branches {
                    join: Join::Add,
                    ..
                }
            )),
            2
        );
        // Stage outputs (after each block's closing ReLU): 16@32x32, 32@16x16, 64@8x8.
        let shapes = model.shapes().expect("consistent shapes");
        assert_eq!(shapes[0], vec![3, 32, 32]);
        assert_eq!(shapes[2 + 2 * 3], vec![16, 32, 32]);
        assert_eq!(shapes[2 + 2 * 6], vec![32, 16, 16]);
        assert_eq!(shapes[2 + 2 * 9], vec![64, 8, 8]);
        assert_eq!(shapes.last(), Some(&vec![10]));
        for seed in 0..3 {
            let mut r = ChaCha20Rng::seed_from_u64(seed);
            let x = ArrayD::from_shape_fn(IxDyn(&[3, 32, 32]), |_| r.random_range(0.0..1.0));
            let y = model.predict(&x).expect("predict");
            assert_eq!(y.shape(), &[10]);
            assert!(y.iter().all(|v| v.is_finite() && v.abs() < 50.0), "{y}");
            // Not degenerate: the logits differ between classes.
            let (lo, hi) = y
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(hi - lo > 1e-3, "{y}");
        }
    }
}
