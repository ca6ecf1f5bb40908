//! Signal measurements shared by the tests and the benchmarks (no daemon, no I/O).

/// THD+N of `x`, a sine of known angular frequency `w` (radians per sample): least-squares fit
/// of `a·sin(ωn) + b·cos(ωn) + c`, then the residual power relative to the fundamental's
/// power, in dB.
pub fn thd_n_db(x: &[f64], w: f64) -> f64 {
    // Normal equations for [sin, cos, 1].
    let mut m = [[0.0f64; 3]; 3];
    let mut v = [0.0f64; 3];
    for (n, &y) in x.iter().enumerate() {
        let b = [(w * n as f64).sin(), (w * n as f64).cos(), 1.0];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += b[i] * b[j];
            }
            v[i] += b[i] * y;
        }
    }
    // Solve 3×3 by Cramer's rule.
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&m);
    let mut coef = [0.0; 3];
    for (k, c) in coef.iter_mut().enumerate() {
        let mut mk = m;
        for i in 0..3 {
            mk[i][k] = v[i];
        }
        *c = det(&mk) / d;
    }
    let mut res = 0.0;
    let mut sig = 0.0;
    for (n, &y) in x.iter().enumerate() {
        let f = coef[0] * (w * n as f64).sin() + coef[1] * (w * n as f64).cos();
        res += (y - f - coef[2]).powi(2);
        sig += f * f;
    }
    10.0 * (res / sig).log10()
}
