//! The end-to-end latency a tunnel reports to its daemon, as a sum of parts that each hold
//! still while nothing changes (so that players keeping A/V sync read the same figure from one
//! query to the next), and the smoothed network time it needs.
//!
//! **The tunnel sink** (what `pactl list sinks` shows, what players add to their own buffer):
//! on average, audio written now plays at the far end after
//!
//! ```text
//!   block/2                      the sink renders a block ahead of its clock: half of one on
//!                                average (added by the device binding, `crates/pulse`)
//! + frame/2 - block              a frame leaves when its last block is rendered, a block ahead
//!                                of that block's end by the sink's clock; the receive buffer's
//!                                mean fill counts the frame's other half
//! + look-ahead                   the codec's delay: Opus 6.5 ms (2.5 ms with application=lowdelay), PCM 0
//! + network                      one way: half the smoothed round trip
//! + receiver                     the receive buffer's mean fill over time (`latency_usec` of its
//!                                reports: what waits between the network and the device, as if
//!                                the device drained it continuously)
//! + device                       what the receiving sink holds when it pulls, and what its
//!                                daemon queues for the stream (`device_latency_usec`)
//! ```
//!
//! (20 ms frames and 10 ms blocks: 5 + 0 + 6.5 ms before the network.) Audio written now is
//! rendered at the end of what the sink holds, as the first sample of its next block, and that
//! block leaves with its frame: the frame's wait is counted from the sink's clock, not from the
//! render. Until 2026-12-07 the sum counted it from the render, `(frame − block)/2`, half a
//! block more, as if the sample written now sat in the middle of its block; the reported
//! figure was then 2.6–5.3 ms above the measured render-to-play latency (tests/tests/playout.rs
//! `p3`, the bench), where this account says 5 ms at the defaults: about 2.6 ms of the real
//! path are not in the sum yet (now 0.7–4.3 ms under render to play, within 2.8 ms of render
//! to render).
//!
//! **The tunnel source**: the next frame it posts was captured at the far end
//! `device + frame/2 + look-ahead + network + receiver - block/2` earlier on average, the
//! device being the far end's source (not reported yet, so not counted), the receiver the
//! tunnel source's own buffer (its mean fill) and the block the source's own (it posts a block
//! when its end is due; the device binding takes the half block off).
use crate::params::{Application, Compression, OpusKnobs};

/// Opus's algorithmic delay beyond the frame, µs: 2.5 ms of MDCT overlap, plus 4 ms of delay
/// compensation unless the application is `lowdelay` (libopus, `OPUS_GET_LOOKAHEAD`).
pub fn lookahead_usec(compression: Compression, knobs: &OpusKnobs) -> u64 {
    match (compression, knobs.application) {
        (Compression::None, _) => 0,
        (Compression::Opus, Application::LowDelay) => 2_500,
        (Compression::Opus, _) => 6_500,
    }
}

/// What the codec adds to a play tunnel's latency beyond the sink's own half block, µs: the
/// frame's wait from the sink's clock and the look-ahead (see the module's documentation);
/// negative when the block is much longer than the frame (the audio leaves ahead of the
/// sink's clock). The sink's half block is the device binding's to add.
pub fn codec_usec(block_usec: u64, frame_usec: u64, lookahead_usec: u64) -> i64 {
    let us = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / 4);
    us(frame_usec) / 2 + us(lookahead_usec) - us(block_usec)
}

/// Holds a figure that arrives now and then (a round trip per connection, a report per
/// second) still: a sample within `deadband` of the figure changes nothing, so that jitter
/// below it never shows; a larger change is taken at once, so that a real step (the target
/// moved) shows as one step rather than a ramp.
#[derive(Debug, Clone, Copy, Default)]
pub struct Steady {
    value: Option<f64>,
    deadband: f64,
}

impl Steady {
    /// An empty estimate ignoring changes below `deadband` (in the figure's unit).
    pub fn new(deadband: f64) -> Steady {
        Steady {
            value: None,
            deadband,
        }
    }

    /// A figure already at `value`, with `deadband` as in [`Steady::new`].
    pub fn holding(value: f64, deadband: f64) -> Steady {
        Steady {
            value: Some(value),
            deadband,
        }
    }

    /// Takes a sample; returns the estimate.
    pub fn update(&mut self, sample: f64) -> f64 {
        let v = match self.value {
            None => sample,
            Some(v) if (sample - v).abs() < self.deadband => v,
            Some(_) => sample,
        };
        self.value = Some(v);
        v
    }

    /// The estimate, if there was a sample.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_part_at_defaults_and_presets() {
        // Defaults: 10 ms block, 20 ms frames, Opus audio: 10 − 10 + 6.5 ms (+ the sink's 5).
        assert_eq!(codec_usec(10_000, 20_000, 6_500), 6_500);
        // The low-latency preset: 2 ms block, 2.5 ms frames, lowdelay.
        assert_eq!(codec_usec(2_000, 2_500, 2_500), 1_750);
        // 10 ms frames on a 10 ms block (UDP's default frames): 5 − 10 + 6.5.
        assert_eq!(codec_usec(10_000, 10_000, 6_500), 1_500);
        // A 60 ms frame on a 10 ms block waits 20 ms from the sink's clock on average.
        assert_eq!(codec_usec(10_000, 60_000, 0), 20_000);
        // A 50 ms block holds its 20 ms frames' audio ahead of the clock.
        assert_eq!(codec_usec(50_000, 20_000, 6_500), -33_500);
    }

    #[test]
    fn lookahead_by_codec_and_application() {
        let mut k = OpusKnobs::default();
        assert_eq!(lookahead_usec(Compression::Opus, &k), 6_500);
        assert_eq!(lookahead_usec(Compression::None, &k), 0);
        k.application = Application::LowDelay;
        assert_eq!(lookahead_usec(Compression::Opus, &k), 2_500);
        k.application = Application::Voip;
        assert_eq!(lookahead_usec(Compression::Opus, &k), 6_500);
    }

    #[test]
    fn smoothing_holds_still_and_follows_steps() {
        let mut s = Steady::new(500.0);
        assert_eq!(s.get(), None);
        assert_eq!(s.update(60_000.0), 60_000.0);
        // Jitter below the deadband does not move it at all.
        for x in [60_300.0, 59_700.0, 60_450.0, 59_600.0] {
            assert_eq!(s.update(x), 60_000.0);
        }
        // A step of 20 ms shows at once, as one step.
        assert_eq!(s.update(80_000.0), 80_000.0);
        assert_eq!(s.update(80_200.0), 80_000.0);
    }
}
