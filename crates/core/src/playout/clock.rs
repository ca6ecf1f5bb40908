//! [`Clock`]: a clock seen through jittery observations (packet arrivals, device pulls), as
//! the line of its earliest observations.

use super::window::SlidingMin;
use std::collections::VecDeque;

/// A clock observed as points `(t, pos)`: at local time `t` (seconds) it had reached sample
/// position `pos` (frames). Jitter only ever makes an observation *late* (a packet waits in
/// the network, a device pull is woken late), so the clock is where its earliest
/// observations put it: with `a = t − pos/rate`, the line is the smallest `a` of the last
/// [`Clock::ENVELOPE_SEC`] seconds, and the lateness of the window's observations is how far
/// the largest `a` lies above that. (Measured against the line as it is now, not as it was when
/// each came: a sender that delivers a block at once — a source posting 500 ms at a time —
/// shows its block as the first packet's lateness as soon as the block's last packet is in.)
///
/// `rate` is the clock's nominal rate until [`Clock::set_rate`] says how fast it runs against
/// ours (the [`super::SkewEstimator`] learns that): with the nominal rate a clock 1000 ppm off
/// drifts 2 ms across the window, which shows as 2 ms of lateness that is not there (a target
/// 2 ms higher, creeping up while the window fills). Its position, too, would be 2 ms off
/// for a slow clock (the window's earliest observation is its oldest, carried on at the
/// wrong rate). A clock whose observations come with little jitter (a device's pulls: its
/// wake-ups) is made with a rate doubt ([`Clock::with_rate_doubt`]): until its rate is
/// known, an observation counts for the position as later by the drift of a clock that far
/// off since it came, so that an old one holds the line only where jitter made the newer
/// ones later than that. (Not for packet arrivals: between a jittery link's early packets
/// that drift is a ramp of the line, which the loop would chase: 60 ms of jitter swung the
/// latency ±5 ms and the correction ±600 ppm in `playout_sim` `calming_pauses`.)
#[derive(Debug, Clone)]
pub struct Clock {
    nominal: f64,
    /// The rate `a` is computed with, frames per second of ours.
    rate: f64,
    /// Positions are kept relative to this one (precision over days of frames).
    base: Option<f64>,
    /// The window's observations `(t, pos − base)`, for a new rate.
    points: VecDeque<(f64, f64)>,
    envelope: SlidingMin,
    /// How far (ratio units) the clock may run from its nominal rate before its rate is
    /// learnt, for its position (see above; 0: none).
    doubt: f64,
    /// The smallest `a − doubt·t` of the window (kept only with a doubt).
    aged: SlidingMin,
    /// Whether `rate` was learnt (else it is the nominal one).
    learnt: bool,
    /// The largest `a` of the same window (kept negated).
    ceiling: SlidingMin,
    last_t: Option<f64>,
}

impl Clock {
    /// How long the earliest observation is remembered, seconds.
    pub const ENVELOPE_SEC: f64 = 2.0;
    /// The rate doubt of a device's clock: the skews the engine is built for (±2000 ppm).
    pub const DEVICE_RATE_DOUBT: f64 = 0.002;

    /// A clock of nominal rate `nominal` (frames per second).
    pub fn new(nominal: f64) -> Clock {
        Self::with_rate_doubt(nominal, 0.0)
    }

    /// A clock of nominal rate `nominal` (frames per second) that may run `doubt` (ratio
    /// units) off it until its rate is learnt.
    pub fn with_rate_doubt(nominal: f64, doubt: f64) -> Clock {
        Clock {
            doubt,
            nominal,
            rate: nominal,
            base: None,
            points: VecDeque::new(),
            envelope: SlidingMin::new(Self::ENVELOPE_SEC),
            aged: SlidingMin::new(Self::ENVELOPE_SEC),
            learnt: false,
            ceiling: SlidingMin::new(Self::ENVELOPE_SEC),
            last_t: None,
        }
    }

    /// An observation: position `pos` reached at time `t`. Returns the largest lateness of
    /// the window's observations (this one included) against the line, seconds.
    pub fn observe(&mut self, t: f64, pos: f64) -> f64 {
        let base = *self.base.get_or_insert(pos);
        self.last_t = Some(t);
        let p = pos - base;
        self.points.push_back((t, p));
        while self
            .points
            .front()
            .is_some_and(|&(t0, _)| t0 < t - Self::ENVELOPE_SEC)
        {
            self.points.pop_front();
        }
        let a = t - p / self.rate;
        self.envelope.push(t, a);
        if self.doubt > 0.0 {
            self.aged.push(t, a - self.doubt * t);
        }
        self.ceiling.push(t, -a);
        let top = self.ceiling.min().map_or(a, |v| -v);
        top - self.envelope.min().unwrap_or(a)
    }

    /// How late position `pos` reached at `t` is against the line, seconds (not observed:
    /// the window is unchanged); `None` before the first observation.
    pub fn lateness(&self, t: f64, pos: f64) -> Option<f64> {
        let base = self.base?;
        let floor = self.envelope.min()?;
        Some((t - (pos - base) / self.rate - floor).max(0.0))
    }

    /// The clock runs at `factor` × its nominal rate against ours (`None`: not known, the
    /// nominal rate): the window is seen again at that rate. (A change under a millionth is
    /// ignored.)
    pub fn set_rate(&mut self, factor: Option<f64>) {
        let rate = self.nominal * factor.unwrap_or(1.0);
        if !rate.is_finite() || rate <= 0.0 {
            return;
        }
        let learnt = factor.is_some();
        let moved = ((rate - self.rate) / self.rate).abs() >= 1e-6;
        if !moved && learnt == self.learnt {
            return;
        }
        self.learnt = learnt;
        if !moved {
            return;
        }
        self.rate = rate;
        self.envelope.clear();
        self.aged.clear();
        self.ceiling.clear();
        for &(t, p) in &self.points {
            let a = t - p / rate;
            self.envelope.push(t, a);
            if self.doubt > 0.0 {
                self.aged.push(t, a - self.doubt * t);
            }
            self.ceiling.push(t, -a);
        }
    }

    /// Whether its rate was learnt ([`Clock::set_rate`] with a factor).
    pub fn learnt(&self) -> bool {
        self.learnt
    }

    /// Whether it has been observed since it was (re)started.
    pub fn started(&self) -> bool {
        self.last_t.is_some()
    }

    /// When it was last observed, seconds.
    pub fn last_seen(&self) -> Option<f64> {
        self.last_t
    }

    /// The line's position at time `t` (frames), if observed.
    pub fn position_at(&self, t: f64) -> Option<f64> {
        let base = self.base?;
        let floor = if self.learnt || self.doubt <= 0.0 {
            self.envelope.min()?
        } else {
            self.aged.min()? + self.doubt * self.last_t?
        };
        Some(base + (t - floor) * self.rate)
    }

    /// The positions jumped by `frames` (a discontinuity of the stream): the line follows,
    /// so that the latency is kept.
    pub fn shift(&mut self, frames: f64) {
        if let Some(b) = self.base.as_mut() {
            *b += frames;
        }
    }

    /// Forgets the observations (the clock restarts, e.g. after a pause); the rate is kept.
    pub fn clear(&mut self) {
        let (rate, learnt) = (self.rate, self.learnt);
        *self = Clock::with_rate_doubt(self.nominal, self.doubt);
        self.rate = rate;
        self.learnt = learnt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jittery_clock_has_its_earliest_line() {
        // A stream 500 ppm fast, packets of 960 frames, each 0–5 ms late.
        let mut c = Clock::new(48_000.0);
        let fs = 48_000.0 * 1.0005;
        let mut seed = 1u64;
        let mut worst = 0.0f64;
        for k in 0..3000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let j = (seed >> 33) as f64 / (1u64 << 31) as f64 * 0.005;
            let pos = 1e12 + (k * 960) as f64;
            let t = (k * 960) as f64 / fs + j;
            let late = c.observe(t, pos);
            worst = worst.max(late);
            if k > 200 {
                // The line is within a millisecond of the earliest possible arrivals.
                let line = c.position_at(t).unwrap();
                let exact = 1e12 + t * fs;
                assert!((line - exact).abs() < 48.0, "{line} {exact}");
            }
        }
        // The jitter, and the drift of the window (2 s at 500 ppm: 1 ms).
        assert!(worst > 0.004 && worst < 0.0065, "{worst}");
    }

    /// A position reached 80 ms after the line had it is 80 ms late, and asking does not
    /// move the line.
    #[test]
    fn lateness_of_a_position_against_the_line() {
        let mut c = Clock::new(48_000.0);
        assert_eq!(c.lateness(0.0, 0.0), None);
        for k in 0..100u64 {
            c.observe(k as f64 * 0.01, (k * 480) as f64);
        }
        let late = c.lateness(1.08, 48_000.0).unwrap();
        assert!((late - 0.08).abs() < 1e-9, "{late}");
        assert_eq!(c.lateness(0.5, 48_000.0), Some(0.0));
        assert!((c.position_at(1.0).unwrap() - 48_000.0).abs() < 1e-6);
    }

    /// A clock 1000 ppm slow with no jitter: at its nominal rate its window drifts 2 ms,
    /// which reads as 2 ms of lateness; at the rate it runs, none.
    #[test]
    fn at_its_own_rate_a_drifting_clock_shows_no_lateness() {
        let mut c = Clock::new(48_000.0);
        let fs = 48_000.0 * 0.999;
        let mut late = 0.0;
        for k in 0..300u64 {
            late = c.observe((k * 480) as f64 / fs, (k * 480) as f64);
        }
        assert!((late - 0.002).abs() < 0.0001, "{late}");
        c.set_rate(Some(0.999));
        let t = (300 * 480) as f64 / fs;
        let late = c.observe(t, (300 * 480) as f64);
        assert!(late < 1e-6, "{late}");
        // The line is the clock's: where its positions are.
        let line = c.position_at(t + 0.5).unwrap();
        assert!(
            (line - (300 * 480) as f64 - 0.5 * fs).abs() < 0.01,
            "{line}"
        );
    }

    /// A device 1000 ppm slow, pulling every 10 ms with up to 0.3 ms of wake-up jitter,
    /// its rate not yet learnt: at the nominal rate the window's oldest pull holds the line
    /// and the position runs up to 2 ms ahead of the device; with a rate doubt of 2000 ppm
    /// the newer pulls hold it and it is within the jitter.
    #[test]
    fn a_rate_doubt_keeps_a_slow_clock_where_its_recent_observations_are() {
        let fd = 48_000.0 * 0.999;
        let mut plain = Clock::new(48_000.0);
        let mut doubting = Clock::with_rate_doubt(48_000.0, 0.002);
        let mut seed = 7u64;
        let (mut worst_plain, mut worst_doubting) = (0.0f64, 0.0f64);
        for k in 0..300u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let j = (seed >> 33) as f64 / (1u64 << 31) as f64 * 0.0003;
            let pos = (k * 480) as f64;
            let t = pos / fd + j;
            plain.observe(t, pos);
            doubting.observe(t, pos);
            let exact = t * fd;
            if k >= 200 {
                worst_plain = worst_plain.max((plain.position_at(t).unwrap() - exact).abs());
                worst_doubting =
                    worst_doubting.max((doubting.position_at(t).unwrap() - exact).abs());
            }
        }
        // Frames: 2 s at 1000 ppm is 96; the jitter is 14.
        assert!(worst_plain > 80.0, "{worst_plain}");
        assert!(worst_doubting < 20.0, "{worst_doubting}");
        // Once the rate is learnt the window's earliest holds the line again.
        doubting.set_rate(Some(0.999));
        assert!(doubting.learnt());
        let t = 3.0;
        assert!((doubting.position_at(t).unwrap() - t * fd).abs() < 20.0);
    }

    #[test]
    fn a_block_delivered_at_once_shows_as_its_first_packets_lateness() {
        // 20 ms packets, 25 at a time every 500 ms (a source posting 500 ms blocks).
        let mut c = Clock::new(48_000.0);
        for block in 0..4u64 {
            let t = 0.5 * block as f64;
            let mut late = 0.0;
            for k in 0..25u64 {
                let pos = ((block * 25 + k + 1) * 960) as f64;
                late = c.observe(t + k as f64 * 1e-5, pos);
            }
            // Once the block is in, its first packet was 480 ms late against the line.
            assert!((late - 0.48).abs() < 0.001, "block {block}: {late}");
        }
    }
}
