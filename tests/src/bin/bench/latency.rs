//! End-to-end click latency (the demo's method, 20 clicks, see
//! [`opus_tunnel_tests::clicks`]), and its summary.

use anyhow::Result;
use opus_tunnel_tests::clicks::{self, ClickPlan};
use opus_tunnel_tests::{Daemon, RATE};
use std::time::Duration;

/// Spacing between clicks, in 10 ms blocks.
const SPACING_BLOCKS: usize = 75;
/// Blocks of silence before the first click (stream start-up).
const LEAD_BLOCKS: usize = 150;

/// Plays `n` clicks into `sink` of `sender`, finds them on `receiver`'s `null.monitor`;
/// returns the delays in ms (one per click found).
pub fn click_latencies(
    sender: &Daemon,
    sink: &str,
    receiver: &Daemon,
    n: usize,
) -> Result<Vec<f64>> {
    let plan = ClickPlan {
        lead_blocks: LEAD_BLOCKS,
        spacing_blocks: SPACING_BLOCKS,
        total_blocks: LEAD_BLOCKS + n * SPACING_BLOCKS + 50,
        drain: Duration::from_millis(300),
        quiet_frames: RATE as usize * 4 / 10,
        max_delay: Duration::from_millis(700),
    };
    clicks::click_latencies(sender, sink, receiver, n, &plan)
}

/// (median, p95 by nearest rank) of `v`; NaN when empty.
pub fn median_p95(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    let rank = ((0.95 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    (med, s[rank - 1])
}
