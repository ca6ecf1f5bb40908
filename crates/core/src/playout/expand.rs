//! [`Expander`]: what the device plays where the ring runs short.
//!
//! An underrun is the device asking for audio the engine does not have yet: a stall of the
//! whole host (the device's catch-up pull comes before the sender's catch-up audio), or a
//! packet later than the target allows. Digital silence there is a hard gap with a click at
//! each end. The expander plays instead the last pitch period of what the device played,
//! repeated and fading out over [`Expander::FADE_SEC`] (the "expand" of WebRTC NetEq, in its
//! plainest form), and when the stream's audio comes back, crossfades into it over
//! [`Expander::BLEND_SEC`]. The engine still counts the underrun and plays the late audio
//! after it: only what fills the gap changes.
//!
//! It runs on the device's real-time thread: fixed buffers allocated up front, a bounded
//! search (one per underrun) for the period, no locks.

/// The device side's filler for missing audio; feed it every sample the device plays.
#[derive(Debug, Clone)]
pub struct Expander {
    channels: usize,
    /// The last played samples (interleaved), circular; `at` is where the next one goes.
    history: Vec<f32>,
    at: usize,
    /// `history` in order, oldest first (for the period search).
    linear: Vec<f32>,
    /// The channel sum of `linear`, one value per frame.
    mono: Vec<f32>,
    /// The repeated period (interleaved) and its length in frames; 0: not expanding.
    period: Vec<f32>,
    period_frames: usize,
    /// Samples played since the gap began (continuation and blend).
    k: usize,
    /// Samples of the stream's audio since it came back (while blending).
    back: usize,
    min_lag: usize,
    max_lag: usize,
    window: usize,
    stride: usize,
    fade: usize,
    blend: usize,
}

impl Expander {
    /// The continuation fades from full level to silence over this long, seconds: a host
    /// stall of 20–30 ms plays at −4 to −8 dB, a longer gap becomes silence.
    pub const FADE_SEC: f64 = 0.05;
    /// The crossfade back into the stream's audio, seconds.
    pub const BLEND_SEC: f64 = 0.0025;
    /// Pitch periods searched, seconds (speech's 80–400 Hz; a tone repeats within them too).
    const MIN_LAG_SEC: f64 = 0.0025;
    const MAX_LAG_SEC: f64 = 0.0125;
    /// The stretch compared with its earlier copies, seconds.
    const WINDOW_SEC: f64 = 0.005;

    /// An expander for `channels` interleaved channels at `rate` Hz.
    pub fn new(rate: u32, channels: usize) -> Expander {
        let channels = channels.max(1);
        let frames = |sec: f64| ((f64::from(rate) * sec).round() as usize).max(1);
        let max_lag = frames(Self::MAX_LAG_SEC);
        let window = frames(Self::WINDOW_SEC);
        let len = max_lag + window;
        Expander {
            channels,
            history: vec![0.0; len * channels],
            at: 0,
            linear: vec![0.0; len * channels],
            mono: vec![0.0; len],
            period: vec![0.0; max_lag * channels],
            period_frames: 0,
            k: 0,
            back: 0,
            min_lag: frames(Self::MIN_LAG_SEC),
            max_lag,
            window,
            // Above 48 kHz, every n-th frame is enough to find the period.
            stride: (rate as usize).div_ceil(48_000).max(1),
            fade: frames(Self::FADE_SEC),
            blend: frames(Self::BLEND_SEC),
        }
    }

    /// The stream's next sample `v` (interleaved order): what to play — `v` itself, or just
    /// after a gap `v` crossfaded from the continuation.
    pub fn real(&mut self, v: f32) -> f32 {
        let out = if self.period_frames == 0 {
            v
        } else {
            let w = (self.back / self.channels + 1) as f32 / (self.blend + 1) as f32;
            let out = v * w + self.continuation() * (1.0 - w);
            self.back += 1;
            if self.back >= self.blend * self.channels {
                self.period_frames = 0;
            }
            out
        };
        self.remember(out);
        out
    }

    /// The next sample where the stream has none (interleaved order, starting on a frame).
    pub fn missing(&mut self) -> f32 {
        if self.period_frames == 0 {
            self.begin();
        } else if self.back > 0 {
            // The stream came back for less than the blend and is gone again: go on from
            // where the continuation is.
            self.back = 0;
        }
        let out = self.continuation();
        self.remember(out);
        out
    }

    fn remember(&mut self, v: f32) {
        self.history[self.at] = v;
        self.at += 1;
        if self.at == self.history.len() {
            self.at = 0;
        }
    }

    /// The continuation's sample `k`, advancing `k`.
    fn continuation(&mut self) -> f32 {
        let frame = self.k / self.channels;
        let gain = 1.0 - frame as f32 / self.fade as f32;
        let v = if gain > 0.0 {
            self.period[self.k % (self.period_frames * self.channels)] * gain
        } else {
            0.0
        };
        self.k += 1;
        v
    }

    /// A gap begins: find the period of the end of what was played and keep it.
    fn begin(&mut self) {
        let n = self.history.len();
        let (newer, older) = (&self.history[..self.at], &self.history[self.at..]);
        self.linear[..older.len()].copy_from_slice(older);
        self.linear[older.len()..n].copy_from_slice(newer);
        let ch = self.channels;
        for (m, frame) in self.mono.iter_mut().zip(self.linear.chunks_exact(ch)) {
            *m = frame.iter().sum();
        }
        let lag = self.best_lag();
        let len = self.mono.len();
        self.period[..lag * ch].copy_from_slice(&self.linear[(len - lag) * ch..len * ch]);
        self.period_frames = lag;
        self.k = 0;
        self.back = 0;
    }

    /// The lag (frames) whose earlier copy of the last window matches it best (normalised
    /// correlation), searched every `stride` frames.
    fn best_lag(&self) -> usize {
        let len = self.mono.len();
        let end = &self.mono[len - self.window..];
        let mut best = (f32::MIN, self.max_lag);
        let mut lag = self.min_lag;
        while lag <= self.max_lag {
            let past = &self.mono[len - self.window - lag..len - lag];
            let (mut xy, mut yy) = (0.0f32, 0.0f32);
            for (x, y) in end.iter().zip(past).step_by(self.stride) {
                xy += x * y;
                yy += y * y;
            }
            let score = if yy > 0.0 { xy / yy.sqrt() } else { 0.0 };
            if score > best.0 {
                best = (score, lag);
            }
            lag += self.stride;
        }
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;

    fn sine(hz: f64, i: usize) -> f32 {
        (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(RATE)).sin()) as f32
    }

    fn db(x: &[f32]) -> f64 {
        let p: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64;
        10.0 * p.log10()
    }

    /// Plays `hz` in stereo for 100 ms, then a gap of `gap` frames, then the tone again;
    /// returns the left channel as played and the tone as it was.
    fn through_a_gap(hz: f64, gap: usize) -> (Vec<f32>, Vec<f32>) {
        let mut e = Expander::new(RATE, 2);
        let (mut played, mut truth) = (Vec::new(), Vec::new());
        for i in 0..4800 + gap + 4800 {
            let v = sine(hz, i);
            let (l, r) = if (4800..4800 + gap).contains(&i) {
                (e.missing(), e.missing())
            } else {
                (e.real(v), e.real(v))
            };
            assert_eq!(l, r, "both channels alike at {i}");
            played.push(l);
            truth.push(v);
        }
        (played, truth)
    }

    #[test]
    fn a_tone_goes_on_through_a_short_gap() {
        for hz in [440.0, 700.0, 1000.0, 997.0] {
            let (played, truth) = through_a_gap(hz, 960);
            let tone = db(&truth[..4800]);
            // The first 10 ms of the gap: the tone's level within 1 dB, and in phase.
            let first = &played[4800..5280];
            assert!((db(first) - tone).abs() < 1.0, "{hz} Hz: {} dB", db(first));
            let err: Vec<f32> = first
                .iter()
                .zip(&truth[4800..5280])
                .enumerate()
                .map(|(j, (p, t))| p - t * (1.0 - j as f32 / 2400.0))
                .collect();
            assert!(db(&err) < tone - 20.0, "{hz} Hz: error {} dB", db(&err));
            // No step at either end of the gap bigger than the tone's own.
            let step = |a: &[f32]| {
                a.windows(2)
                    .map(|w| (w[1] - w[0]).abs())
                    .fold(0.0f32, f32::max)
            };
            let own = step(&truth[..4800]);
            assert!(step(&played[4790..5810]) <= own * 1.5, "{hz} Hz");
        }
    }

    #[test]
    fn a_long_gap_fades_to_silence_and_the_stream_fades_back_in() {
        let (played, _) = through_a_gap(700.0, 4800);
        // 50 ms into the gap it is silent, until the stream comes back.
        assert!(played[4800 + 2400..9600].iter().all(|v| *v == 0.0));
        // Back: the first sample soft, the tone whole 2.5 ms later.
        assert!(played[9600].abs() < 0.01);
        assert!((db(&played[9720..10680]) - db(&played[..4800])).abs() < 0.1);
    }

    #[test]
    fn nothing_played_yet_is_silence() {
        let mut e = Expander::new(RATE, 1);
        assert!((0..2000).all(|_| e.missing() == 0.0));
        assert!((e.real(0.25) - 0.25 / 121.0).abs() < 1e-6);
    }
}
