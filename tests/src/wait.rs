//! Waiting on a running tunnel: for a tone to arrive, for a count to drop to zero.

use crate::analysis::has_tone;
use std::time::{Duration, Instant};

/// Reads `slice`-second pieces with `read` until the last second holds `left`/`right` Hz
/// (within 5 Hz, [`has_tone`] at 0.3); the time it took, or `None` after `timeout` or when
/// `read` gives nothing.
pub fn wait_for_tone(
    mut read: impl FnMut(f64) -> Option<Vec<i16>>,
    slice: f64,
    (left, right): (f64, f64),
    timeout: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    let mut window: Vec<i16> = Vec::new();
    while t.elapsed() < timeout {
        window.extend_from_slice(&read(slice)?);
        let keep = 48_000 * 2; // 1 s of stereo
        if window.len() > keep {
            window.drain(..window.len() - keep);
        }
        if has_tone(&window, left, right, 5.0, 0.3) {
            return Some(t.elapsed());
        }
    }
    None
}

/// Polls `count` every 250 ms until it is 0 or `timeout` has passed; the last count and the
/// time waited.
pub fn wait_for_zero(timeout: Duration, mut count: impl FnMut() -> usize) -> (usize, Duration) {
    let t = Instant::now();
    while count() != 0 && t.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(250));
    }
    (count(), t.elapsed())
}
