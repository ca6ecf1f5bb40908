//! A second-order delay-locked loop (DLL) that filters time, after Fons Adriaensen,
//! "Using a DLL to filter time" (LAC 2005).
//!
//! A clock is observed as a series of points `(t, pos)`: at local monotonic time `t`
//! (seconds) the clock had reached sample position `pos` (frames). Each observation is
//! jittery (network delay, scheduling); the DLL fits a straight line `pos(t) = p0 + rate·(t −
//! t0)` through them, following slow changes of rate with a second-order loop of natural
//! frequency `ω = 2π·bandwidth` (critically damped, `ζ = 1/√2`):
//!
//! ```text
//! e     = pos − (p0 + rate·(t − t0))      phase error, frames
//! p0   ← p0 + rate·(t − t0) + √2·ω·dt·e   t0 ← t
//! rate ← rate + ω²·dt·e
//! ```
//!
//! Because the gains scale with the time since the previous update (`dt`), the loop works
//! with irregular updates (a reader that misses some reports, packets of any duration).
//!
//! Robustness: the error is clipped to four times its running mean absolute value (at least
//! [`Dll::MIN_CLIP_SEC`]), so a network stall (a run of packets 100 ms late followed by a
//! burst) moves the estimate very little; an error beyond [`Dll::JUMP_SEC`], or a long run of
//! clipped errors of one sign (the delay really changed), re-phases the loop (keeps the
//! rate, moves the line onto the new point).

/// A second-order DLL on one clock; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Dll {
    nominal: f64,
    bandwidth: f64,
    t0: f64,
    p0: f64,
    rate: f64,
    mae: f64,
    updates: u64,
    clipped_run: i32,
    rephases: u64,
    hold_rate: bool,
}

impl Dll {
    /// Smallest clipping bound of the phase error, seconds.
    pub const MIN_CLIP_SEC: f64 = 0.002;
    /// A phase error larger than this (seconds) re-phases the loop instead of steering it.
    pub const JUMP_SEC: f64 = 0.5;
    /// This many clipped errors of one sign in a row re-phase the loop.
    const CLIPPED_RUN_REPHASE: i32 = 100;

    /// A loop for a clock of nominal rate `nominal_rate` (frames per second, > 0) with loop
    /// bandwidth `bandwidth_hz`. It takes its phase from the first update.
    pub fn new(nominal_rate: f64, bandwidth_hz: f64) -> Dll {
        let nominal = if nominal_rate.is_finite() && nominal_rate > 0.0 {
            nominal_rate
        } else {
            1.0
        };
        Dll {
            nominal,
            bandwidth: bandwidth_hz.max(0.0),
            t0: 0.0,
            p0: 0.0,
            rate: nominal,
            mae: Self::MIN_CLIP_SEC / 4.0,
            updates: 0,
            clipped_run: 0,
            rephases: 0,
            hold_rate: false,
        }
    }

    /// Changes the loop bandwidth (Hz); takes effect at the next update.
    pub fn set_bandwidth(&mut self, bandwidth_hz: f64) {
        self.bandwidth = bandwidth_hz.max(0.0);
    }

    /// While `hold` is set the loop follows the phase only and keeps its rate (a young loop
    /// fed with bursty observations would take their slope for a rate).
    pub fn set_hold_rate(&mut self, hold: bool) {
        self.hold_rate = hold;
    }

    /// The loop bandwidth, Hz.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth
    }

    /// Forgets everything (phase and rate); the next update starts the loop again.
    pub fn reset(&mut self) {
        *self = Dll::new(self.nominal, self.bandwidth);
    }

    /// Moves the line onto `(t, pos)` keeping the rate estimate (a discontinuity of the
    /// observed clock: a pause, a jump of the stream position, a changed network delay).
    pub fn rephase(&mut self, t: f64, pos: f64) {
        self.t0 = t;
        self.p0 = pos;
        self.clipped_run = 0;
        self.rephases += 1;
        if self.updates == 0 {
            self.updates = 1;
        }
    }

    /// Moves the line onto `(t, pos)` keeping the rate, without counting a re-phase (the
    /// caller knows the observation is the better anchor: the earliest of a burst).
    pub fn anchor(&mut self, t: f64, pos: f64) {
        if !t.is_finite() || !pos.is_finite() {
            return;
        }
        self.t0 = t;
        self.p0 = pos;
        self.clipped_run = 0;
        if self.updates == 0 {
            self.updates = 1;
        }
    }

    /// Shifts the position of the line by `frames` (the observed clock jumped by a known
    /// amount) without touching the time base.
    pub fn shift(&mut self, frames: f64) {
        if frames.is_finite() {
            self.p0 += frames;
        }
    }

    /// Feeds one observation: at time `t` (seconds) the clock was at `pos` (frames). Returns
    /// the phase error before the update, frames (unclipped). Non-finite input is ignored.
    pub fn update(&mut self, t: f64, pos: f64) -> f64 {
        if !t.is_finite() || !pos.is_finite() {
            return 0.0;
        }
        if self.updates == 0 {
            self.t0 = t;
            self.p0 = pos;
            self.updates = 1;
            return 0.0;
        }
        let dt = (t - self.t0).max(0.0);
        let pred = self.p0 + self.rate * dt;
        let e = pos - pred;
        let e_sec = e / self.rate;
        if e_sec.abs() > Self::JUMP_SEC {
            self.rephase(t, pos);
            return e;
        }
        let lim = (4.0 * self.mae).max(Self::MIN_CLIP_SEC);
        let e_clip = e_sec.clamp(-lim, lim);
        if e_clip != e_sec {
            self.clipped_run = if e_sec > 0.0 {
                self.clipped_run.max(0) + 1
            } else {
                self.clipped_run.min(0) - 1
            };
            if self.clipped_run.abs() >= Self::CLIPPED_RUN_REPHASE {
                self.rephase(t, pos);
                return e;
            }
        } else {
            self.clipped_run = 0;
        }
        self.mae += 0.01 * (e_sec.abs().min(2.0 * lim) - self.mae);
        let w = 2.0 * std::f64::consts::PI * self.bandwidth * dt;
        let k1 = (std::f64::consts::SQRT_2 * w).min(1.0);
        let e_frames = e_clip * self.rate;
        self.p0 = pred + k1 * e_frames;
        self.t0 = t;
        if dt > 0.0 && !self.hold_rate {
            let k2 = (w * w / dt).min(1.0 / dt.max(1e-3));
            self.rate += k2 * e_frames;
            // A clock is never off by more than 10 % from its nominal rate.
            self.rate = self.rate.clamp(self.nominal * 0.9, self.nominal * 1.1);
        }
        self.updates += 1;
        e
    }

    /// The filtered position of the clock at time `t` (seconds), frames.
    pub fn position_at(&self, t: f64) -> f64 {
        self.p0 + self.rate * (t - self.t0)
    }

    /// The filtered rate, frames per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The nominal rate given at creation, frames per second.
    pub fn nominal(&self) -> f64 {
        self.nominal
    }

    /// Number of observations taken.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Whether the loop has a phase (at least one observation).
    pub fn started(&self) -> bool {
        self.updates > 0
    }

    /// Times the loop re-phased on a jump.
    pub fn rephases(&self) -> u64 {
        self.rephases
    }

    /// Running mean absolute phase error, seconds (the jitter the loop sees).
    pub fn jitter_sec(&self) -> f64 {
        self.mae
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Feeds a 20 ms packet clock of rate `48000·(1+skew)` with uniform jitter ±`jit` s.
    fn run(dll: &mut Dll, skew: f64, jit: f64, secs: f64, seed: u64) -> (f64, f64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let rate = 48_000.0 * (1.0 + skew);
        let n = (secs / 0.02) as u64;
        let mut sq = 0.0;
        let mut cnt = 0.0;
        for k in 0..n {
            let t_true = k as f64 * 0.02;
            let pos = t_true * rate;
            let t = 1.0 + t_true + (rng.gen::<f64>() * 2.0 - 1.0) * jit;
            dll.update(t, pos);
            if k > n / 2 {
                // Phase error of the filtered line against the true one, seconds.
                let e = (dll.position_at(1.0 + t_true) - pos) / rate;
                sq += e * e;
                cnt += 1.0;
            }
        }
        (
            (dll.rate() / 48_000.0 - 1.0 - skew) * 1e6,
            (sq / cnt).sqrt(),
        )
    }

    #[test]
    fn locks_to_a_known_period_with_jitter() {
        let mut dll = Dll::new(48_000.0, 0.01);
        let (rate_err_ppm, phase_rms) = run(&mut dll, 300e-6, 0.005, 3000.0, 1);
        println!(
            "DLL 0.01 Hz, 20 ms updates, ±5 ms jitter, +300 ppm: rate error {rate_err_ppm:.3} ppm, \
             phase error RMS {:.3} ms",
            phase_rms * 1e3
        );
        assert!(rate_err_ppm.abs() < 10.0);
        assert!(phase_rms < 0.6e-3);
        assert_eq!(dll.rephases(), 0);
    }

    #[test]
    fn noise_follows_the_bandwidth() {
        // Phase noise variance of a 2nd-order loop: σ²·2·B_L·T, B_L = ω(ζ + 1/4ζ)/2.
        let sigma = 0.002 / 3f64.sqrt();
        for bw in [0.02, 0.1, 0.5] {
            let mut dll = Dll::new(48_000.0, bw);
            let (_, rms) = run(&mut dll, 0.0, 0.002, 600.0, 2);
            let w = 2.0 * std::f64::consts::PI * bw;
            let zeta = std::f64::consts::FRAC_1_SQRT_2;
            let bl = w * (zeta + 1.0 / (4.0 * zeta)) / 2.0;
            let theory = sigma * (2.0 * bl * 0.02).sqrt();
            println!(
                "DLL bandwidth {bw} Hz: phase noise {:.4} ms RMS, theory {:.4} ms",
                rms * 1e3,
                theory * 1e3
            );
            assert!(
                rms > theory * 0.6 && rms < theory * 1.6,
                "{rms} vs {theory}"
            );
        }
    }

    #[test]
    fn a_stall_barely_moves_it_and_a_jump_rephases() {
        let mut dll = Dll::new(48_000.0, 0.01);
        run(&mut dll, 0.0, 0.002, 300.0, 3);
        let t0 = 1.0 + 300.0;
        let before = dll.position_at(t0 + 1.0);
        // Five packets 100, 80, 60, 40, 20 ms late.
        for i in 0..5 {
            let tt = t0 + i as f64 * 0.02;
            dll.update(tt + 0.1 - i as f64 * 0.02, tt * 48_000.0 - 48_000.0);
        }
        let moved = (dll.position_at(t0 + 1.0) - before).abs() / 48.0;
        println!("a 100 ms stall moved the DLL by {moved:.4} ms");
        assert!(moved < 0.2);
        dll.update(t0 + 0.2, t0 * 48_000.0 + 48_000.0);
        assert_eq!(dll.rephases(), 1);
    }
}
