//! Plaintext kernels on ring elements that the engine and the models share: a party's
//! local part of a linear layer (`W x` and a convolution on its share, in `Z_2^l`), and
//! the windows of pooling (im2col).

use cipherml_mpc::ring::Ring;
use ndarray::{Array2, Array4};

/// `W x` in `Z_2^l` for `W` `(out, in)`.
pub fn matvec_ring(ring: Ring, w: &Array2<i64>, x: &[u64]) -> Vec<u64> {
    w.rows()
        .into_iter()
        .map(|row| {
            row.iter().zip(x).fold(0u64, |acc, (&wi, &xi)| {
                acc.wrapping_add((wi as u64).wrapping_mul(xi))
            }) & ring.mask()
        })
        .collect()
}

/// A convolution in `Z_2^l`, input `(C, H, W)` row-major.
pub fn conv_ring(
    ring: Ring,
    x: &[u64],
    w: &Array4<i64>,
    input: (usize, usize, usize),
    stride: usize,
    pad: usize,
) -> Vec<u64> {
    let (c, h, wd) = input;
    let (o, _, kh, kw) = w.dim();
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (wd + 2 * pad - kw) / stride + 1;
    let mut out = vec![0u64; o * ho * wo];
    for oc in 0..o {
        for y in 0..ho {
            for xx in 0..wo {
                let mut acc = 0u64;
                for ic in 0..c {
                    for pi in 0..kh {
                        for q in 0..kw {
                            let iy = (y * stride + pi) as isize - pad as isize;
                            let ix = (xx * stride + q) as isize - pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                let v = x[(ic * h + iy as usize) * wd + ix as usize];
                                acc = acc.wrapping_add((w[[oc, ic, pi, q]] as u64).wrapping_mul(v));
                            }
                        }
                    }
                }
                out[(oc * ho + y) * wo + xx] = acc & ring.mask();
            }
        }
    }
    out
}

/// The windows of max-pooling, each `kernel * kernel` values, in output order.
pub fn im2col(x: &[u64], input: (usize, usize, usize), kernel: usize, stride: usize) -> Vec<u64> {
    let (c, h, w) = input;
    let ho = (h - kernel) / stride + 1;
    let wo = (w - kernel) / stride + 1;
    let mut out = Vec::with_capacity(c * ho * wo * kernel * kernel);
    for ch in 0..c {
        for y in 0..ho {
            for xx in 0..wo {
                for p in 0..kernel {
                    for q in 0..kernel {
                        out.push(x[(ch * h + y * stride + p) * w + xx * stride + q]);
                    }
                }
            }
        }
    }
    out
}

/// Visits every element of the patches of a convolution of one `(C, H, W)` image with
/// zero padding that is inside the image: `f(row, column, input index)` for row `(c, p,
/// q)`, column `(y, x)` and the input at `(c, y stride + p - pad, x stride + q - pad)`.
/// The one index walk of [`conv_patches`], of its backward pass and of the training's
/// plaintext reference.
pub fn for_each_patch(
    (c, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (w + 2 * pad - kw) / stride + 1;
    for ch in 0..c {
        for p in 0..kh {
            for q in 0..kw {
                let row = (ch * kh + p) * kw + q;
                for y in 0..ho {
                    for xx in 0..wo {
                        let iy = (y * stride + p) as isize - pad as isize;
                        let ix = (xx * stride + q) as isize - pad as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            f(row, y * wo + xx, (ch * h + iy as usize) * w + ix as usize);
                        }
                    }
                }
            }
        }
    }
}

/// The patches of a convolution as a `(C kh kw) x (Ho Wo)` matrix, row-major: row
/// `(c, p, q)`, column `(y, x)` holds the input at `(c, y stride + p - pad, x stride + q -
/// pad)`, zero outside (padding). `W (O x C kh kw)` times it is the convolution.
pub fn conv_patches(
    x: &[u64],
    (c, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> Vec<u64> {
    let cols = ((h + 2 * pad - kh) / stride + 1) * ((w + 2 * pad - kw) / stride + 1);
    let mut out = vec![0u64; c * kh * kw * cols];
    for_each_patch((c, h, w), (kh, kw), stride, pad, |row, col, pos| {
        out[row * cols + col] = x[pos];
    });
    out
}
