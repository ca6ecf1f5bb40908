//! [`TargetAdapter`]: the latency the engine holds, sized from what it measures.

use super::window::DecayingMax;

/// How the target is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Sized from the measured lateness (`target_latency_msec=auto`).
    Auto,
    /// A fixed latency, µs (`target_latency_msec=N`).
    Fixed(u64),
}

/// The target latency. In [`Target::Auto`] mode it is the largest wait of a packet's first
/// frame in the last [`TargetAdapter::WINDOW_SEC`] seconds — its lateness against the
/// earliest-arrival line (what the link, the sender's blocks and our own wake-ups add) plus
/// the packet's length — plus what the engine itself needs to have the audio out in time (the
/// resampler's look-ahead and a guard), within `[min, max]`. A packet later than any before raises it at once; an underrun (the
/// device found the ring short) raises it by what was missing; it forgets a second at a
/// time, so a calm link brings it down within the window.
#[derive(Debug, Clone)]
pub struct TargetAdapter {
    mode: Target,
    rate: f64,
    min: f64,
    max: f64,
    need: f64,
    /// The waits of packets' first frames, frames.
    waits: DecayingMax,
    /// What the device found missing, frames.
    shortfalls: DecayingMax,
}

impl TargetAdapter {
    /// How long a lateness is remembered, seconds.
    pub const WINDOW_SEC: usize = 10;
    /// Kept on top of the measured needs, seconds: the concealment guard
    /// ([`super::CONCEAL_GUARD_USEC`], 1 ms) and 3 ms for what the window has not seen. A
    /// window of a few seconds underestimates the link it will see next: on a busy two-core
    /// host a packet 3.3 ms later than any in the stream's first 4 s came in 1 of 7 runs of
    /// the 7 s speech test (quality.rs); with 1 ms for it, each such packet was concealed and
    /// then grew the latency in mid-speech (PESQ-WB 0.25 below opusenc), with 3 ms none was
    /// in 15 runs. It costs 2 ms of latency.
    pub const GUARD_SEC: f64 = 0.004;

    /// An adapter for a stream at `rate` Hz, in `mode`, bounded by `min_usec..=max_usec`,
    /// whose engine needs `engine_frames` of buffer itself (the resampler's look-ahead).
    pub fn new(mode: Target, rate: u32, min_usec: u64, max_usec: u64, engine_frames: f64) -> Self {
        let rate = f64::from(rate);
        let min = min_usec as f64 * 1e-6 * rate;
        TargetAdapter {
            mode,
            rate,
            min,
            max: (max_usec as f64 * 1e-6 * rate).max(min),
            need: engine_frames + Self::GUARD_SEC * rate,
            waits: DecayingMax::new(Self::WINDOW_SEC),
            shortfalls: DecayingMax::new(Self::WINDOW_SEC),
        }
    }

    /// A packet of `frames` frames arrived `late` frames behind the earliest-arrival line at
    /// time `t` (s): its first frame waited `late + frames`.
    pub fn on_packet(&mut self, t: f64, late: f64, frames: f64) {
        self.waits.push(t, late.max(0.0) + frames);
    }

    /// The device found the ring `missing` frames short at time `t`: the target covers that
    /// much more (the largest shortfall of the window, on top of the waits).
    pub fn on_underrun(&mut self, t: f64, missing: f64) {
        self.shortfalls.push(t, missing.max(0.0));
    }

    /// The longest wait of the window, frames.
    pub fn wait(&mut self, t: f64) -> f64 {
        self.waits.max(t).unwrap_or(0.0)
    }

    /// The target at time `t` (s), frames.
    pub fn target(&mut self, t: f64) -> f64 {
        match self.mode {
            Target::Fixed(usec) => (usec as f64 * 1e-6 * self.rate).clamp(self.min, self.max),
            Target::Auto => {
                let short = self.shortfalls.max(t).unwrap_or(0.0);
                (self.wait(t) + short + self.need).clamp(self.min, self.max)
            }
        }
    }

    /// The upper bound, frames.
    pub fn max_frames(&self) -> f64 {
        self.max
    }

    /// The mode.
    pub fn mode(&self) -> Target {
        self.mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(f: f64) -> f64 {
        f / 48.0
    }

    #[test]
    fn sizes_from_the_longest_recent_wait_and_forgets_it() {
        let mut a = TargetAdapter::new(Target::Auto, 48_000, 0, 1_000_000, 48.0);
        // Nothing measured: needs (1 ms) + guard (4 ms).
        assert!(
            (ms(a.target(0.0)) - 5.0).abs() < 0.01,
            "{}",
            ms(a.target(0.0))
        );
        // A 10 ms packet on time, then one 30 ms late.
        a.on_packet(0.0, 0.0, 480.0);
        assert!((ms(a.target(0.0)) - 15.0).abs() < 0.01);
        a.on_packet(1.0, 48.0 * 30.0, 480.0);
        assert!((ms(a.target(1.0)) - 45.0).abs() < 0.01);
        for k in 2..=20 {
            a.on_packet(k as f64, 48.0, 480.0);
            if k == 5 {
                assert!(
                    (ms(a.target(5.0)) - 45.0).abs() < 0.01,
                    "{}",
                    ms(a.target(5.0))
                );
            }
        }
        // 10 s on, the 30 ms are forgotten.
        assert!(
            (ms(a.target(20.0)) - 16.0).abs() < 0.01,
            "{}",
            ms(a.target(20.0))
        );
        a.on_underrun(20.5, 48.0 * 5.0);
        assert!((ms(a.target(20.5)) - 21.0).abs() < 0.01);
    }

    #[test]
    fn bounded_and_fixed() {
        let mut a = TargetAdapter::new(Target::Auto, 48_000, 20_000, 50_000, 48.0);
        assert!((ms(a.target(0.0)) - 20.0).abs() < 0.01);
        a.on_packet(0.1, 48.0 * 500.0, 480.0);
        assert!((ms(a.target(0.1)) - 50.0).abs() < 0.01);
        let mut f = TargetAdapter::new(Target::Fixed(30_000), 48_000, 0, 100_000, 48.0);
        f.on_packet(0.1, 48.0 * 500.0, 480.0);
        assert!((ms(f.target(0.1)) - 30.0).abs() < 0.01);
    }
}
