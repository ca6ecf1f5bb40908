//! The loop filter and PI controller of the resampling ratio.

use super::MAX_CORRECTION;

/// The loop filter and PI controller of the ratio: a first-order low-pass on the latency
/// error (pole at `4·ωn`), then `u = ff − Kp·e_f + I`, `I ← I − Ki·e_f·dt` with `Kp = 2·ωn`,
/// `Ki = ωn²` (critically damped with the integrating plant `dL/dt = u − u*`). The output
/// is clamped to ±[`MAX_CORRECTION`]; the integrator is clamped too and does not integrate
/// while the output is saturated in the direction it would push (no wind-up).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pi {
    /// Filtered error, seconds.
    pub filt: f64,
    /// Integrator, ratio units.
    pub integ: f64,
}

impl Pi {
    /// One step: latency error `e` (seconds, positive = too much audio), feed-forward
    /// correction `ff` (ratio units), time step `dt` (s), natural frequency `wn` (rad/s).
    /// Returns the correction `ratio − 1`.
    pub fn update(&mut self, e: f64, ff: f64, dt: f64, wn: f64) -> f64 {
        self.update_within(e, ff, dt, wn, 2.0 * MAX_CORRECTION)
    }

    /// As [`update`](Self::update), with the output also kept within `dev` of `ff` (the loop
    /// may not move the pitch further from what the clock rates call for); the integrator
    /// does not wind up against either bound.
    pub fn update_within(&mut self, e: f64, ff: f64, dt: f64, wn: f64, dev: f64) -> f64 {
        let wf = 4.0 * wn;
        self.filt += (wf * dt).min(1.0) * (e - self.filt);
        let kp = 2.0 * wn;
        let ki = wn * wn;
        let p = -kp * self.filt;
        let cand = self.integ - ki * self.filt * dt;
        let lo = (ff - dev).max(-MAX_CORRECTION);
        let hi = (ff + dev).min(MAX_CORRECTION);
        let out_now = ff + p + self.integ;
        let step = cand - self.integ;
        let pushes_out = (step > 0.0 && out_now >= hi) || (step < 0.0 && out_now <= lo);
        if !pushes_out {
            self.integ = cand.clamp(-MAX_CORRECTION, MAX_CORRECTION);
        }
        (ff + p + self.integ).clamp(lo.min(hi), hi.max(lo))
    }
}
