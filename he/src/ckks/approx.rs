//! Polynomial approximations of activation functions on a declared interval, for
//! [`super::Evaluator::eval_poly`]: Chebyshev interpolation, converted to the power basis,
//! with the maximum error measured on a dense grid.

/// A polynomial approximation `p(x) ~ f(x)` for `x` in `[lo, hi]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolyApprox {
    /// Coefficients in the power basis, lowest degree first.
    pub coeffs: Vec<f64>,
    /// The interval on which the error bound holds.
    pub interval: (f64, f64),
    /// `max |p(x) - f(x)|` over a grid of 20,001 points of the interval (plaintext
    /// arithmetic; CKKS adds its own small error on top).
    pub max_error: f64,
}

impl PolyApprox {
    /// Interpolates `f` at the `degree + 1` Chebyshev nodes of `[lo, hi]`.
    pub fn chebyshev(f: impl Fn(f64) -> f64, lo: f64, hi: f64, degree: usize) -> Self {
        assert!(lo < hi, "empty interval");
        let n = degree + 1;
        let half = (hi - lo) / 2.0;
        let mid = (hi + lo) / 2.0;
        // Chebyshev coefficients c_j of f(mid + half * y), y in [-1, 1].
        let nodes: Vec<f64> = (0..n)
            .map(|k| (std::f64::consts::PI * (k as f64 + 0.5) / n as f64).cos())
            .collect();
        let fv: Vec<f64> = nodes.iter().map(|&y| f(mid + half * y)).collect();
        let cheb: Vec<f64> = (0..n)
            .map(|j| {
                let s: f64 = (0..n)
                    .map(|k| {
                        fv[k]
                            * (std::f64::consts::PI * j as f64 * (k as f64 + 0.5) / n as f64).cos()
                    })
                    .sum();
                s * 2.0 / n as f64 * if j == 0 { 0.5 } else { 1.0 }
            })
            .collect();
        // Power basis in y: sum c_j T_j(y).
        let mut in_y = vec![0.0; n];
        let mut t_prev = vec![0.0; n];
        let mut t_cur = vec![0.0; n];
        t_prev[0] = 1.0; // T_0
        if n > 1 {
            t_cur[1] = 1.0; // T_1
        }
        for (j, &c) in cheb.iter().enumerate() {
            let t = if j == 0 { &t_prev } else { &t_cur };
            for i in 0..n {
                in_y[i] += c * t[i];
            }
            if j >= 1 && j + 1 < n {
                // T_{j+1} = 2 y T_j - T_{j-1}
                let mut next = vec![0.0; n];
                for i in 0..n - 1 {
                    next[i + 1] += 2.0 * t_cur[i];
                }
                for i in 0..n {
                    next[i] -= t_prev[i];
                }
                t_prev = std::mem::replace(&mut t_cur, next);
            }
        }
        // Substitute y = (x - mid) / half.
        let a = 1.0 / half;
        let b = -mid / half;
        let mut coeffs = vec![0.0; n];
        // Horner in y with polynomial arithmetic in x.
        for &c in in_y.iter().rev() {
            // coeffs = coeffs * (a x + b) + c
            let mut next = vec![0.0; n];
            for i in 0..n {
                if coeffs[i] != 0.0 {
                    next[i] += coeffs[i] * b;
                    if i + 1 < n {
                        next[i + 1] += coeffs[i] * a;
                    }
                }
            }
            next[0] += c;
            coeffs = next;
        }
        let max_error = max_error(&coeffs, &f, lo, hi);
        Self {
            coeffs,
            interval: (lo, hi),
            max_error,
        }
    }

    /// ReLU on `[-bound, bound]`.
    pub fn relu(bound: f64, degree: usize) -> Self {
        Self::chebyshev(|x| x.max(0.0), -bound, bound, degree)
    }

    /// The logistic sigmoid on `[-bound, bound]`.
    pub fn sigmoid(bound: f64, degree: usize) -> Self {
        Self::chebyshev(|x| 1.0 / (1.0 + (-x).exp()), -bound, bound, degree)
    }

    /// `tanh` on `[-bound, bound]`.
    pub fn tanh(bound: f64, degree: usize) -> Self {
        Self::chebyshev(f64::tanh, -bound, bound, degree)
    }

    /// Evaluates the polynomial in plaintext.
    pub fn eval(&self, x: f64) -> f64 {
        horner(&self.coeffs, x)
    }

    /// The degree.
    pub fn degree(&self) -> usize {
        self.coeffs.len().saturating_sub(1)
    }
}

fn horner(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &v| acc * x + v)
}

fn max_error(coeffs: &[f64], f: &impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    (0..=20_000)
        .map(|i| {
            let x = lo + (hi - lo) * i as f64 / 20_000.0;
            (horner(coeffs, x) - f(x)).abs()
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_reproduces_polynomials() {
        // A cubic is reproduced exactly by a degree-3 interpolant on any interval.
        let f = |x: f64| 0.5 - 2.0 * x + 0.25 * x * x * x;
        let p = PolyApprox::chebyshev(f, -3.0, 5.0, 3);
        let want = [0.5, -2.0, 0.0, 0.25];
        for (a, b) in p.coeffs.iter().zip(want) {
            assert!((a - b).abs() < 1e-10, "{:?}", p.coeffs);
        }
        assert!(p.max_error < 1e-10);
    }

    #[test]
    fn stated_errors_are_small_and_shrink_with_degree() {
        let s3 = PolyApprox::sigmoid(8.0, 3);
        let s7 = PolyApprox::sigmoid(8.0, 7);
        assert!(s7.max_error < s3.max_error);
        assert!(s7.max_error < 0.03, "{}", s7.max_error);
        let t = PolyApprox::tanh(2.0, 7);
        assert!(t.max_error < 0.01, "{}", t.max_error);
        let r = PolyApprox::relu(1.0, 15);
        assert!(r.max_error < 0.05, "{}", r.max_error);
        // Spot check against the function.
        for x in [-0.9, -0.3, 0.0, 0.4, 1.0] {
            assert!((r.eval(x) - x.max(0.0)).abs() <= r.max_error + 1e-12);
        }
    }
}
