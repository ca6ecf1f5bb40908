//! Analysis of recorded audio: frequency, level, where the signal is, dropouts.
//!
//! Levels are in dBFS referenced to a full-scale *sine* (AES17): a sine whose peak is
//! `x` dBFS reads `x` here, whatever its frequency, so "played at -12 dBFS" and "measured
//! at -12 dBFS" mean the same thing.

use rustfft::{num_complex::Complex, FftPlanner};
use std::ops::Range;

use crate::signal::RATE;

/// Length of one envelope block, in frames (1 ms).
const BLOCK: usize = RATE as usize / 1000;

/// Channel `ch` of interleaved samples with `channels` channels, as floats in [-1, 1].
pub fn channel(samples: &[i16], ch: usize, channels: usize) -> Vec<f32> {
    assert!(ch < channels, "channel {ch} of {channels}");
    samples
        .chunks_exact(channels)
        .map(|f| f[ch] as f32 / 32768.0)
        .collect()
}

/// Magnitude spectrum of `samples` under a Hann window: bins 0 to n/2 - 1 (n the length),
/// `rate / n` Hz apart.
pub fn hann_spectrum(samples: &[f32]) -> Vec<f64> {
    let n = samples.len();
    let mut buf: Vec<Complex<f64>> = samples
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos();
            Complex::new(s as f64 * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    buf[..n / 2].iter().map(|c| c.norm()).collect()
}

/// The dominant frequency in Hz (Hann window, FFT, parabolic interpolation on the log
/// magnitude around the peak; the bins below 20 Hz are ignored). Resolution is far better
/// than ±1 Hz for ≥ 1 s of a steady tone. Returns 0.0 for silence or fewer than 64 samples.
pub fn dominant_frequency(samples: &[f32], rate: u32) -> f64 {
    let n = samples.len();
    if n < 64 {
        return 0.0;
    }
    let mags = hann_spectrum(samples);
    let lo = ((20.0 * n as f64 / rate as f64).ceil() as usize).max(1);
    let Some((k, &peak)) = mags
        .iter()
        .enumerate()
        .skip(lo)
        .max_by(|a, b| a.1.total_cmp(b.1))
    else {
        return 0.0;
    };
    if peak <= 1e-9 {
        return 0.0;
    }
    let mut offset = 0.0;
    if k > 0 && k + 1 < mags.len() {
        let (a, b, c) = (
            (mags[k - 1] + 1e-30).ln(),
            peak.ln(),
            (mags[k + 1] + 1e-30).ln(),
        );
        let den = a - 2.0 * b + c;
        if den.abs() > 1e-12 {
            offset = (0.5 * (a - c) / den).clamp(-0.5, 0.5);
        }
    }
    (k as f64 + offset) * rate as f64 / n as f64
}

/// RMS level in dBFS (sine-referenced: `20·log10(rms·√2)`); -200 for digital silence.
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return -200.0;
    }
    let ms = samples.iter().map(|&s| s as f64 * s as f64).sum::<f64>() / samples.len() as f64;
    if ms <= 0.0 {
        return -200.0;
    }
    10.0 * (2.0 * ms).log10()
}

/// The frequency (Hz) and level (dBFS) of the left channel of a 48 kHz stereo recording.
pub fn left_tone(samples: &[i16]) -> (f64, f64) {
    let l = channel(samples, 0, 2);
    (dominant_frequency(&l, 48_000), rms_dbfs(&l))
}

/// Envelope: level (sine-referenced dBFS) of each 1 ms block, over all channels.
fn envelope(samples: &[i16], channels: usize) -> Vec<f64> {
    samples
        .chunks(BLOCK * channels)
        .map(|b| {
            let ms = b
                .iter()
                .map(|&s| {
                    let x = s as f64 / 32768.0;
                    x * x
                })
                .sum::<f64>()
                / b.len().max(1) as f64;
            if ms <= 0.0 {
                -200.0
            } else {
                10.0 * (2.0 * ms).log10()
            }
        })
        .collect()
}

/// The first stretch of signal, in frames: from the first 1 ms block louder than
/// `threshold_dbfs` to the first gap of ≥ 200 ms below it afterwards (or the end).
/// `None` if nothing is that loud.
pub fn active_region(
    samples: &[i16],
    channels: usize,
    threshold_dbfs: f64,
) -> Option<Range<usize>> {
    let env = envelope(samples, channels);
    let start = env.iter().position(|&l| l > threshold_dbfs)?;
    let mut end = env.len();
    let mut quiet = 0;
    let mut last_loud = start;
    for (i, &l) in env.iter().enumerate().skip(start) {
        if l > threshold_dbfs {
            quiet = 0;
            last_loud = i;
        } else {
            quiet += 1;
            if quiet >= 200 {
                end = last_loud + 1;
                break;
            }
        }
    }
    if end == env.len() {
        end = last_loud + 1;
    }
    let frames = samples.len() / channels;
    Some((start * BLOCK).min(frames)..(end * BLOCK).min(frames))
}

/// The steady part of the first stretch of signal (threshold -50 dBFS): the
/// [`active_region`] without its first `skip_secs` and its last 50 ms, as interleaved
/// samples. `None` if there is no signal or less than 0.1 s is left.
pub fn steady_part(samples: &[i16], channels: usize, skip_secs: f64) -> Option<&[i16]> {
    let r = active_region(samples, channels, -50.0)?;
    let skip = (skip_secs * RATE as f64) as usize;
    let start = r.start + skip;
    let end = r.end.saturating_sub(RATE as usize / 20);
    if end <= start || end - start < RATE as usize / 10 {
        return None;
    }
    Some(&samples[start * channels..end * channels])
}

/// A stretch where the signal fell away.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Start, in ms from the start of the analysed samples.
    pub start_ms: f64,
    /// Length in ms.
    pub len_ms: f64,
}

/// Dropouts: stretches of ≥ 5 ms where the 1 ms envelope (all channels) is more than 20 dB
/// below its median, looked for between the first and the last block louder than -50 dBFS
/// (leading and trailing silence is not a dropout).
pub fn dropouts(samples: &[i16], channels: usize) -> Vec<Dropout> {
    let env = envelope(samples, channels);
    let Some(first) = env.iter().position(|&l| l > -50.0) else {
        return Vec::new();
    };
    let last = env.iter().rposition(|&l| l > -50.0).unwrap_or(first);
    // The last block may be partial; leave it out of the search.
    let active = &env[first..=last];
    let mut sorted = active.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let floor = median - 20.0;
    let mut out = Vec::new();
    let mut run_start = None;
    for (i, &l) in active
        .iter()
        .chain(std::iter::once(&f64::INFINITY))
        .enumerate()
    {
        if l < floor {
            run_start.get_or_insert(i);
        } else if let Some(s) = run_start.take() {
            if i - s >= 5 {
                out.push(Dropout {
                    start_ms: (first + s) as f64,
                    len_ms: (i - s) as f64,
                });
            }
        }
    }
    out
}

/// What [`analyse_stereo`] found in the steady part of a stereo recording.
#[derive(Debug, Clone, PartialEq)]
pub struct StereoReport {
    pub left_hz: f64,
    pub right_hz: f64,
    pub left_dbfs: f64,
    pub right_dbfs: f64,
    /// Seconds of steady signal analysed.
    pub seconds: f64,
    pub dropouts: Vec<Dropout>,
}

impl StereoReport {
    /// Leaves out the dropouts of a recording during which the sound server's graph missed
    /// `graph_xruns` cycles ([`crate::pipewire::PipeWire::graph_xruns`]): the host held the
    /// daemon's data thread up, and the graph itself played silence, at most one dropout per
    /// missed cycle. Any other dropout stays (and fails [`assert_tone`](Self::assert_tone)).
    /// Says what it left out.
    pub fn excuse_graph_xruns(&mut self, test: &str, graph_xruns: usize) {
        if !self.dropouts.is_empty() && self.dropouts.len() <= graph_xruns {
            println!(
                "{test}: {} graph xruns during the recording (the host held the daemon up): \
                 dropouts {:?} not counted",
                graph_xruns, self.dropouts
            );
            self.dropouts.clear();
        }
    }

    /// Panics with a readable message unless both channels carry the expected tone
    /// (±`hz_tol` Hz) at `dbfs` (±`db_tol` dB), with no dropout.
    pub fn assert_tone(&self, left_hz: f64, right_hz: f64, dbfs: f64, hz_tol: f64, db_tol: f64) {
        let ok = (self.left_hz - left_hz).abs() <= hz_tol
            && (self.right_hz - right_hz).abs() <= hz_tol
            && (self.left_dbfs - dbfs).abs() <= db_tol
            && (self.right_dbfs - dbfs).abs() <= db_tol;
        assert!(
            ok,
            "expected {left_hz} Hz L / {right_hz} Hz R at {dbfs} dBFS (±{hz_tol} Hz, ±{db_tol} dB), got {self:?}"
        );
        assert!(
            self.dropouts.is_empty(),
            "dropouts in the steady part: {self:?}"
        );
    }
}

/// Frequency and level of each channel, and dropouts, over the steady part of an
/// interleaved stereo recording ([`steady_part`] with `skip_secs`); `None` without signal.
pub fn analyse_stereo(samples: &[i16], skip_secs: f64) -> Option<StereoReport> {
    let steady = steady_part(samples, 2, skip_secs)?;
    let l = channel(steady, 0, 2);
    let r = channel(steady, 1, 2);
    Some(StereoReport {
        left_hz: dominant_frequency(&l, RATE),
        right_hz: dominant_frequency(&r, RATE),
        left_dbfs: rms_dbfs(&l),
        right_dbfs: rms_dbfs(&r),
        seconds: l.len() as f64 / RATE as f64,
        dropouts: dropouts(steady, 2),
    })
}

/// True if `samples` (interleaved stereo) hold the tone `left_hz`/`right_hz` (±`hz_tol`)
/// over at least `min_secs` of steady signal: for polling a recording until a tone arrives.
pub fn has_tone(samples: &[i16], left_hz: f64, right_hz: f64, hz_tol: f64, min_secs: f64) -> bool {
    match analyse_stereo(samples, 0.0) {
        Some(r) => {
            r.seconds >= min_secs
                && (r.left_hz - left_hz).abs() <= hz_tol
                && (r.right_hz - right_hz).abs() <= hz_tol
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::tone;

    #[test]
    fn frequency_and_level_of_a_generated_tone() {
        let s = tone(&[1000.0, 1500.0], -12.0, 1.0);
        let l = channel(&s, 0, 2);
        let r = channel(&s, 1, 2);
        assert!((dominant_frequency(&l, RATE) - 1000.0).abs() < 0.2);
        assert!((dominant_frequency(&r, RATE) - 1500.0).abs() < 0.2);
        assert!(
            (rms_dbfs(&l[2400..]) + 12.0).abs() < 0.1,
            "{}",
            rms_dbfs(&l)
        );
        let f = dominant_frequency(&channel(&tone(&[997.3], -6.0, 1.2), 0, 1), RATE);
        assert!((f - 997.3).abs() < 0.5, "{f}");
    }

    #[test]
    fn active_region_and_dropouts() {
        let mut s = vec![0i16; 48_000 * 2 / 2]; // 0.5 s silence
        let t = tone(&[1000.0, 1500.0], -12.0, 1.0);
        s.extend_from_slice(&t);
        let r = active_region(&s, 2, -50.0).unwrap();
        assert!((r.start as i64 - 24_000).abs() <= 48, "{r:?}");
        assert!(dropouts(&s, 2).is_empty());
        let steady = steady_part(&s, 2, 0.1).unwrap();
        assert!(steady.len() > 48_000);
        // Punch a 10 ms hole in the middle.
        let mut holed = t.clone();
        for v in &mut holed[2 * 24_000..2 * 24_480] {
            *v = 0;
        }
        let d = dropouts(&holed, 2);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].len_ms >= 9.0 && d[0].len_ms <= 11.0, "{d:?}");
        // A 3 ms hole is not a dropout.
        let mut short = t.clone();
        for v in &mut short[2 * 24_000..2 * 24_144] {
            *v = 0;
        }
        assert!(dropouts(&short, 2).is_empty());
    }
}
