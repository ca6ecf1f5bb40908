//! Time-scale modification by whole periods (the idea of WebRTC NetEq's accelerate and
//! expand, written afresh): where the audio at the head of the FIFO repeats itself after some
//! lag — a tone, a held note, a vowel — one period of it can be cut out or played twice,
//! cross-faded, without a click or a pitch change. The engine uses it to follow its target in
//! audio that has no silence to trim (playing a period twice only after an underrun: a target
//! that rose without a loss is met in silence and by the loop).

use std::collections::VecDeque;

/// The least normalised correlation between the head and its shifted copy that counts as a
/// period: tones and held notes reach it; speech, whose vowels drift in pitch and shape, mostly
/// does not (its pauses are where it is trimmed), so a start or a step does not warp its timing.
pub const MIN_MATCH: f64 = 0.98;

/// The best period at the head of `x` (interleaved, `ch` channels): the lag in
/// `min_lag..=max_lag` frames whose next `w` frames match the first `w` frames best
/// (normalised cross-correlation of the channel sum), if that match reaches [`MIN_MATCH`].
pub fn period(
    x: &VecDeque<f32>,
    ch: usize,
    w: usize,
    min_lag: usize,
    max_lag: usize,
) -> Option<usize> {
    let frames = x.len() / ch.max(1);
    if ch == 0 || w == 0 || min_lag == 0 || frames < w + min_lag {
        return None;
    }
    let max_lag = max_lag.min(frames - w);
    let mono = |i: usize| -> f64 { (0..ch).map(|c| f64::from(x[i * ch + c])).sum() };
    let head: Vec<f64> = (0..w).map(mono).collect();
    let e0: f64 = head.iter().map(|v| v * v).sum();
    if e0 <= 1e-12 {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for lag in min_lag..=max_lag {
        let (mut xy, mut e1) = (0.0, 0.0);
        for (i, h) in head.iter().enumerate() {
            let v = mono(lag + i);
            xy += h * v;
            e1 += v * v;
        }
        if e1 <= 1e-12 {
            continue;
        }
        let c = xy / (e0 * e1).sqrt();
        let better = match best {
            Some((_, b)) => c > b,
            None => true,
        };
        if c >= MIN_MATCH && better {
            best = Some((lag, c));
        }
    }
    best.map(|(lag, _)| lag)
}

/// Cuts one period of `lag` frames out of the head of `x`: the first `w` frames cross-fade
/// into frames `lag..lag + w`, and the audio goes on from there.
pub fn cut(x: &mut VecDeque<f32>, ch: usize, lag: usize, w: usize) {
    if x.len() < (lag + w) * ch {
        return;
    }
    let mut faded = Vec::with_capacity(w * ch);
    for i in 0..w {
        let g = (i as f32 + 0.5) / w as f32;
        for c in 0..ch {
            faded.push(x[i * ch + c] * (1.0 - g) + x[(lag + i) * ch + c] * g);
        }
    }
    x.drain(..(lag + w) * ch);
    for v in faded.into_iter().rev() {
        x.push_front(v);
    }
}

/// Plays one period of `lag` frames at the head of `x` twice: after frames `0..lag`, frames
/// `lag..lag + w` cross-fade back into frames `0..w`, and the audio goes on from `w`.
pub fn repeat(x: &mut VecDeque<f32>, ch: usize, lag: usize, w: usize) {
    if x.len() < (lag + w) * ch {
        return;
    }
    let mut head = Vec::with_capacity((lag + w) * ch);
    head.extend(x.range(..lag * ch).copied());
    for i in 0..w {
        let g = (i as f32 + 0.5) / w as f32;
        for c in 0..ch {
            head.push(x[(lag + i) * ch + c] * (1.0 - g) + x[i * ch + c] * g);
        }
    }
    x.drain(..w * ch);
    for v in head.into_iter().rev() {
        x.push_front(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(f: f64, n: usize, ch: usize) -> VecDeque<f32> {
        let mut v = VecDeque::new();
        for i in 0..n {
            let s = (0.5 * (2.0 * std::f64::consts::PI * f * i as f64 / 48_000.0).sin()) as f32;
            for _ in 0..ch {
                v.push_back(s);
            }
        }
        v
    }

    fn max_step(x: &VecDeque<f32>, ch: usize) -> f32 {
        let v: Vec<f32> = x.iter().step_by(ch).copied().collect();
        v.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn a_tone_loses_and_gains_whole_periods_without_a_click() {
        // 1 kHz: a period is 48 frames; a lag of 240 (5 ms) is five of them.
        let mut x = tone(1000.0, 960, 2);
        let lag = period(&x, 2, 120, 120, 480).expect("a tone repeats");
        assert_eq!(lag % 48, 0, "{lag}");
        let smooth = max_step(&x, 2);
        cut(&mut x, 2, lag, 120);
        assert_eq!(x.len(), (960 - lag) * 2);
        assert!(
            max_step(&x, 2) <= smooth * 1.05,
            "{} vs {smooth}",
            max_step(&x, 2)
        );
        let mut y = tone(1000.0, 960, 2);
        repeat(&mut y, 2, lag, 120);
        assert_eq!(y.len(), (960 + lag) * 2);
        assert!(max_step(&y, 2) <= smooth * 1.05);
    }

    /// Surround: a different tone on every channel. Whatever lag is taken must be a period of
    /// every channel, or the cut clicks on the channels it is not a period of.
    #[test]
    fn a_cut_never_clicks_on_any_channel() {
        let freqs = [500.0, 700.0, 900.0, 1100.0, 1300.0, 80.0];
        let ch = freqs.len();
        let mut x = VecDeque::new();
        for i in 0..4800 {
            for f in freqs {
                let t = i as f64 / 48_000.0;
                x.push_back((0.25 * (2.0 * std::f64::consts::PI * f * t).sin()) as f32);
            }
        }
        let step = |x: &VecDeque<f32>, c: usize| {
            let v: Vec<f32> = x.iter().skip(c).step_by(ch).copied().collect();
            v.windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0.0, f32::max)
        };
        let smooth: Vec<f32> = (0..ch).map(|c| step(&x, c)).collect();
        for (min, max) in [(120, 480), (120, 2400), (480, 2400)] {
            if let Some(lag) = period(&x, ch, 120, min, max) {
                let mut y = x.clone();
                cut(&mut y, ch, lag, 120);
                for c in 0..ch {
                    assert!(
                        step(&y, c) <= smooth[c] * 1.05,
                        "lag {lag} in {min}..={max}: channel {c} ({} Hz) steps {} (smooth {})",
                        freqs[c],
                        step(&y, c),
                        smooth[c]
                    );
                }
            }
        }
    }

    #[test]
    fn noise_has_no_period() {
        let mut seed = 7u64;
        let x: VecDeque<f32> = (0..960)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        assert_eq!(period(&x, 1, 120, 120, 480), None);
    }
}
