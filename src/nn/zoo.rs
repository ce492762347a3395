//! The benchmark networks of BENCHMARKS.md with random weights (He initialization), for
//! timing and for checking private execution against the plaintext reference.

use ndarray::{Array1, Array2, Array4};
use rand::{Rng, RngCore};

use super::{Layer, Sequential};

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
    let s = (2.0 / (c * k * k) as f64).sqrt();
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
