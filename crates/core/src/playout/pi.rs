//! [`LoopFilter`]: the latency error → the correction beyond the skew.

/// The loop filter: the latency error low-passed (pole at `4·gain`: critically damped with
/// the integrating plant), times `−gain`, within ±`limit`. With the skew fed forward
/// ([`super::SkewEstimator`]) the plant is a pure integrator of the correction, and this
/// proportional loop holds the latency with a time constant of `1/gain`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoopFilter {
    /// The filtered error, seconds.
    pub filtered: f64,
}

impl LoopFilter {
    /// One step: latency error `err` (seconds, positive = too much audio) after `dt`
    /// seconds, at `gain` (1/s: ratio correction per second of error), within ±`limit`.
    /// Returns the correction (ratio units).
    pub fn update(&mut self, err: f64, dt: f64, gain: f64, limit: f64) -> f64 {
        self.filtered += (4.0 * gain * dt).min(1.0) * (err - self.filtered);
        (-gain * self.filtered).clamp(-limit, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5 ms excess at gain 0.5/s and limit 1000 ppm: the correction saturates, then the
    /// error decays without overshoot.
    #[test]
    fn brings_an_error_back_without_overshoot() {
        let mut f = LoopFilter::default();
        let (mut err, dt) = (0.005f64, 0.01);
        let mut lowest = err;
        for _ in 0..3000 {
            let c = f.update(err, dt, 0.5, 0.001);
            assert!(c.abs() <= 0.001 + 1e-15);
            err += c * dt;
            lowest = lowest.min(err);
        }
        assert!(err.abs() < 1e-5, "{err}");
        assert!(lowest > -0.0002, "overshoot {lowest}");
    }
}
