//! [`SkewEstimator`]: the ratio that holds the latency still, from how the latency moves.

use super::MAX_CORRECTION;

/// Learns the clocks' skew (the ratio − 1 that holds the latency still) from the slope of the
/// latency: a ratio above the skew feeds the device more slowly from the stream, so over the
/// last second `dL/dt = (ratio − 1) − skew`, and `skew = mean(ratio − 1) − dL/dt`. The slope is a least-squares line through the latency of the last
/// [`SkewEstimator::FIT_SEC`] (exponential weights); the estimate follows those samples with
/// the running mean of its samples at first, an exponential mean with a time constant of
/// [`SkewEstimator::SETTLED_SEC`] once it has run that long. Steps of
/// the latency that are not drift (a trim, a concealment, a cut) re-anchor the line; the
/// level of the latency never enters, so a start's error does not bend the skew.
#[derive(Debug, Clone, Default)]
pub struct SkewEstimator {
    fit: LineFit,
    ratio_avg: f64,
    first: Option<f64>,
    /// When the first slope was used.
    learning: Option<f64>,
    skew: f64,
}

impl SkewEstimator {
    /// The memory of the latency's slope, seconds.
    pub const FIT_SEC: f64 = 1.0;
    /// The slope is used once the line spans this much, seconds.
    pub const SPAN_SEC: f64 = 0.5;
    /// The longest time constant of the estimate, seconds.
    pub const SETTLED_SEC: f64 = 30.0;
    /// Once settled, a sample counts at most this far from the estimate (ratio units): the
    /// clocks' skew moves by a few ppm a minute (temperature), so a sample further off is a
    /// disturbance the step detection missed (a stalled sender, a late device), and must not
    /// bend the skew by more than this.
    pub const SETTLED_SPREAD: f64 = 50e-6;

    /// A sample: at time `t` (s) the latency was `latency` (s) with the correction
    /// `ratio − 1` in force since the previous sample, `dt` seconds before.
    pub fn update(&mut self, t: f64, latency: f64, ratio_minus_1: f64, dt: f64) {
        let first = *self.first.get_or_insert(t);
        let w = (dt / Self::FIT_SEC).min(1.0);
        self.ratio_avg += w * (ratio_minus_1 - self.ratio_avg);
        self.fit.push(t, latency, Self::FIT_SEC);
        if t - first < Self::SPAN_SEC {
            return;
        }
        let Some(slope) = self.fit.slope() else {
            return;
        };
        // A running mean of the samples at first, an exponential one once it has settled.
        let learning = *self.learning.get_or_insert(t - dt);
        let tau = (t - learning).clamp(Self::SPAN_SEC, Self::SETTLED_SEC);
        let sample = (self.ratio_avg - slope).clamp(-MAX_CORRECTION, MAX_CORRECTION);
        let mut dev = sample - self.skew;
        if t - learning >= Self::SETTLED_SEC {
            dev = dev.clamp(-Self::SETTLED_SPREAD, Self::SETTLED_SPREAD);
        }
        self.skew += (dt / tau).min(1.0) * dev;
    }

    /// The latency stepped (not by drift): the slope starts afresh from the next sample.
    pub fn step(&mut self) {
        self.fit = LineFit::default();
        self.first = None;
    }

    /// The skew, ratio units (0 until learnt).
    pub fn skew(&self) -> f64 {
        self.skew
    }
}

/// An exponentially weighted least-squares line `y = c + slope·t`.
#[derive(Debug, Clone, Default)]
pub struct LineFit {
    origin: f64,
    last: Option<f64>,
    s0: f64,
    s1: f64,
    s2: f64,
    sy: f64,
    sxy: f64,
}

impl LineFit {
    /// Adds `(t, y)`, older points weighing `exp(−age/memory)`.
    pub fn push(&mut self, t: f64, y: f64, memory: f64) {
        if let Some(last) = self.last {
            let k = (-(t - last).max(0.0) / memory.max(1e-3)).exp();
            self.s0 *= k;
            self.s1 *= k;
            self.s2 *= k;
            self.sy *= k;
            self.sxy *= k;
        } else {
            self.origin = t;
        }
        self.last = Some(t);
        // Times relative to the newest point: the sums stay small.
        let c = t - self.origin;
        self.s2 += -2.0 * c * self.s1 + c * c * self.s0;
        self.s1 -= c * self.s0;
        self.sxy -= c * self.sy;
        self.origin = t;
        self.s0 += 1.0;
        self.sy += y;
        // x = 0 for the newest point: it adds nothing to s1, s2, sxy.
    }

    /// The slope, once there are three points spanning some time.
    pub fn slope(&self) -> Option<f64> {
        let den = self.s0 * self.s2 - self.s1 * self.s1;
        (self.s0 >= 3.0 && den > 1e-12).then(|| (self.s0 * self.sxy - self.s1 * self.sy) / den)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fit_finds_a_slope() {
        let mut f = LineFit::default();
        for k in 0..2000 {
            let t = 1000.0 + k as f64 * 0.01;
            let noise = if k % 2 == 0 { 1e-5 } else { -1e-5 };
            f.push(t, 3.0 + 0.002 * t + noise, 1.0);
        }
        let s = f.slope().unwrap();
        assert!((s - 0.002).abs() < 1e-5, "{s}");
    }

    /// A plant with a 2000 ppm skew and a latency 3 ms off at the start: the estimate finds
    /// the skew, not the offset.
    #[test]
    fn learns_the_skew_and_not_the_level() {
        let mut e = SkewEstimator::default();
        let (mut lat, skew, dt) = (0.003f64, 0.002, 0.01);
        for k in 0..1000 {
            let t = k as f64 * dt;
            let ratio = 0.0005 - 0.5 * lat;
            lat += (ratio - skew) * dt;
            e.update(t, lat, ratio, dt);
        }
        assert!((e.skew() - skew).abs() < 100e-6, "{}", e.skew());
    }

    /// A settled estimate and a disturbance the step detection missed (the latency creeps
    /// 2 ms in a second, as behind a stalled sender): the skew moves by a few ppm, not tens.
    #[test]
    fn a_settled_skew_shrugs_off_a_disturbance() {
        let mut e = SkewEstimator::default();
        let (mut lat, skew, dt) = (0.060f64, -0.0005, 0.01);
        let mut t = 0.0;
        let mut run = |e: &mut SkewEstimator, lat: &mut f64, secs: f64, creep: f64| {
            for _ in 0..(secs / dt) as usize {
                t += dt;
                let ratio = skew - 0.1 * (*lat - 0.060);
                *lat += (ratio - skew) * dt + creep * dt;
                e.update(t, *lat, ratio, dt);
            }
        };
        run(&mut e, &mut lat, 60.0, 0.0);
        let settled = e.skew();
        assert!((settled - skew).abs() < 10e-6, "{settled}");
        run(&mut e, &mut lat, 1.0, 0.002);
        run(&mut e, &mut lat, 2.0, 0.0);
        assert!((e.skew() - settled).abs() < 5e-6, "{} {settled}", e.skew());
    }
}
