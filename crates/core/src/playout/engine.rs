//! [`Playout`]: the engine, a [`Controller`] with the audio (input FIFO, rubato resampler).

use super::tsm;
use super::*;
use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};
use std::collections::VecDeque;

/// Parameters of the sinc resampler (rubato `SincFixedIn`), chosen with the quality test and
/// the CPU benchmark (`examples/bench_playout.rs` prints the alternatives): 64-tap Blackman²
/// windowed sinc (cutoff 0.855 of Nyquist, 20.5 kHz at 48 kHz), 256× oversampled table, linear
/// interpolation between table points. THD+N of a 1 kHz sine at ratio 1.001 is about −139 dB,
/// the same as with 128 taps, for ~20 % less CPU; rubato's cost per output sample does not go
/// much below that at any length (a 32-tap filter saves another 15 % and cuts at 16.9 kHz).
pub fn sinc_parameters() -> SincInterpolationParameters {
    let sinc_len = 64;
    let window = WindowFunction::Blackman2;
    SincInterpolationParameters {
        sinc_len,
        f_cutoff: rubato::calculate_cutoff(sinc_len, window),
        oversampling_factor: 256,
        interpolation: SincInterpolationType::Linear,
        window,
    }
}

/// The engine: a [`Controller`] plus the input FIFO and a rubato sinc resampler. See the
/// [module documentation](super).
pub struct Playout {
    ctl: Controller,
    channels: usize,
    chunk: usize,
    fifo: VecDeque<f32>,
    resampler: SincFixedIn<f32>,
    inbuf: Vec<Vec<f32>>,
    outbuf: Vec<Vec<f32>>,
    last_ts: Option<u32>,
    ext: i64,
    /// Frames of silence played in a row just before the FIFO's head (a pause is silence
    /// after [`PAUSE_SEC`] of it).
    silent_run: usize,
    /// [`PAUSE_SEC`] in frames.
    pause_frames: usize,
}

impl std::fmt::Debug for Playout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playout")
            .field("ctl", &self.ctl)
            .field("fifo", &self.fifo.len())
            .finish()
    }
}

impl Playout {
    /// An engine for `cfg` (checked with [`PlayoutConfig::validate`]).
    pub fn new(cfg: PlayoutConfig) -> Result<Playout, PlayoutError> {
        cfg.validate()?;
        let channels = usize::from(cfg.channels);
        // The resampler reads 2.5 ms at a time: every Opus frame is a whole number of chunks,
        // so no received audio waits for the next packet to complete a chunk.
        let chunk = (cfg.rate as usize / 400).max(8);
        let resampler = SincFixedIn::<f32>::new(
            1.0,
            1.0 + 2.0 * MAX_CORRECTION,
            sinc_parameters(),
            chunk,
            channels,
        )
        .map_err(|e| PlayoutError::Resampler(e.to_string()))?;
        // SincFixedIn delays its output by half the filter length.
        let delay = resampler.output_delay() as f64;
        let outbuf = resampler.output_buffer_allocate(true);
        let ctl = Controller::new(cfg, chunk, delay)?;
        Ok(Playout {
            ctl,
            channels,
            chunk,
            fifo: VecDeque::new(),
            resampler,
            inbuf: vec![vec![0.0; chunk]; channels],
            outbuf,
            last_ts: None,
            ext: 0,
            silent_run: 0,
            pause_frames: (PAUSE_SEC * f64::from(cfg.rate)).round() as usize,
        })
    }

    /// A packet arrived at `now_usec` (µs, monotonic): `rtp_ts` is the position of its first
    /// frame in the stream's sample clock (frames at `rate`; for Opus at other rates than
    /// 48 kHz convert the 48 kHz RTP ticks first), wrapping at 2³²; `pcm` its decoded
    /// interleaved samples (a trailing partial frame is ignored). Late audio that PLC already
    /// stood in for is dropped; gaps and jumps of the timestamp are handled.
    pub fn on_packet(&mut self, now_usec: u64, rtp_ts: u32, pcm: &[f32]) {
        self.on_audio(now_usec, Some(now_usec), rtp_ts, pcm);
    }

    /// As [`on_packet`](Self::on_packet), for audio handed over at `now_usec` that arrived at
    /// `arrived_usec`, or did not arrive (`None`: rebuilt, FEC-decoded or concealed by the
    /// caller); see [`Controller::on_audio`].
    pub fn on_audio(&mut self, now_usec: u64, arrived_usec: Option<u64>, rtp_ts: u32, pcm: &[f32]) {
        let pos = match self.last_ts {
            None => i64::from(rtp_ts) + (1i64 << 40),
            Some(last) => self.ext + i64::from(rtp_ts.wrapping_sub(last) as i32),
        };
        self.last_ts = Some(rtp_ts);
        self.ext = pos;
        let frames = pcm.len() / self.channels;
        let skip = self
            .ctl
            .on_audio(now_usec, arrived_usec, pos, frames as u64) as usize;
        self.fifo
            .extend(&pcm[skip * self.channels..frames * self.channels]);
    }

    /// A packet of `frames` frames at `rtp_ts` arrived at `now_usec` after its time had
    /// been played (concealed): its audio is not used, but its lateness sizes the target as
    /// any arrival's does; see [`Controller::on_too_late`].
    pub fn on_too_late(&mut self, now_usec: u64, rtp_ts: u32, frames: u64) {
        if let Some(last) = self.last_ts {
            let pos = self.ext + i64::from(rtp_ts.wrapping_sub(last) as i32);
            self.ctl.on_too_late(now_usec, pos, frames);
        }
    }

    /// Frames of the audio at `rtp_ts` (a stream position) that the stream already holds,
    /// received or concealed: a lost packet's stand-in need only cover the rest.
    pub fn covered_from(&self, rtp_ts: u32) -> u64 {
        match self.last_ts {
            None => 0,
            Some(last) => self
                .ctl
                .covered_from(self.ext + i64::from(rtp_ts.wrapping_sub(last) as i32)),
        }
    }

    /// The device (sink IO thread) reported at `now_usec`: frames popped from the ring so
    /// far, and frames it asked for that were missing, both cumulative. See
    /// [`Controller::on_device`].
    pub fn on_device(&mut self, now_usec: u64, consumed_total: u64, missing_total: u64) {
        self.ctl.on_device(now_usec, consumed_total, missing_total);
    }

    /// Frames (per channel, a multiple of 2.5 ms) of Opus PLC to run now, if any; hand the
    /// result to [`on_conceal`](Self::on_conceal). Call at every wake-up (at least every
    /// [`WAKE_USEC`]).
    pub fn conceal_needed(&self, now_usec: u64) -> Option<usize> {
        self.ctl.conceal_needed(now_usec)
    }

    /// How long the worker may sleep before it must ask [`conceal_needed`](Self::conceal_needed)
    /// again (µs, at most [`WAKE_USEC`]).
    pub fn wake_in_usec(&self, now_usec: u64) -> u64 {
        self.ctl.wake_in_usec(now_usec)
    }

    /// Concealed audio (interleaved) to play as if it had arrived.
    pub fn on_conceal(&mut self, pcm: &[f32]) {
        let frames = pcm.len() / self.channels;
        self.fifo.extend(&pcm[..frames * self.channels]);
        self.ctl.on_conceal(frames as u64);
    }

    /// Appends to `out` the audio ready for the ring (interleaved, resampled, trimmed). The
    /// ring fill is then `produced − consumed`; the caller must push all of it.
    pub fn produce(&mut self, out: &mut Vec<f32>) {
        let plan = self.ctl.plan();
        let ch = self.channels;
        let n_drop = (plan.drop_frames as usize).min(self.fifo.len() / ch);
        self.fifo.drain(..n_drop * ch);
        out.resize(out.len() + plan.insert_frames as usize * ch, 0.0);
        if plan.trim_frames != 0 {
            let (dropped, inserted) = self.trim(plan.trim_frames, plan.reshape);
            self.ctl.on_trimmed(dropped, inserted);
        }
        let chunk = self.chunk as u64;
        let plan = Plan {
            // What the trim left to feed (nothing while buffering).
            feed_frames: if plan.feed_frames > 0 {
                self.ctl.fifo_frames() / chunk * chunk
            } else {
                0
            },
            ..plan
        };
        let mut left = plan.feed_frames as usize;
        if self.ctl.external_resampler() {
            // Whoever plays the ring resamples: pass the audio through.
            let n = left.min(self.fifo.len() / ch);
            self.note_played(n);
            out.extend(self.fifo.drain(..n * ch));
            self.ctl.on_produced(n as u64, n as u64);
            return;
        }
        if self.resampler.set_resample_ratio(plan.ratio, true).is_err() {
            let _ = self.resampler.set_resample_ratio(1.0, true);
        }
        while left >= self.chunk && self.fifo.len() >= self.chunk * ch {
            self.note_played(self.chunk);
            let mut it = self.fifo.drain(..self.chunk * ch);
            for i in 0..self.chunk {
                for buf in self.inbuf.iter_mut() {
                    buf[i] = it.next().unwrap_or(0.0);
                }
            }
            drop(it);
            let (nin, nout) =
                match self
                    .resampler
                    .process_into_buffer(&self.inbuf, &mut self.outbuf, None)
                {
                    Ok(v) => v,
                    Err(_) => (self.chunk, 0),
                };
            let start = out.len();
            out.resize(start + nout * ch, 0.0);
            for (c, buf) in self.outbuf.iter().enumerate() {
                for (o, v) in out[start + c..].iter_mut().step_by(ch).zip(&buf[..nout]) {
                    *o = *v;
                }
            }
            self.ctl.on_produced(nin as u64, nout as u64);
            left -= self.chunk;
        }
    }

    /// Drops (`frames` > 0) or inserts (< 0) up to `|frames|` frames at the head of the FIFO,
    /// where it does not show: in silence at the head (whole 2.5 ms chunks below the silence
    /// level), exactly; else, with `reshape`, where the audio repeats itself (a tone, a held
    /// note), one whole period of it ([`tsm`]). Returns (dropped, inserted).
    fn trim(&mut self, frames: i64, reshape: bool) -> (u64, u64) {
        let ch = self.channels;
        let block = self.chunk;
        let silent = |fifo: &VecDeque<f32>, from: usize| {
            fifo.range(from * ch..(from + block) * ch)
                .all(|v| v.abs() <= SILENCE_PEAK)
        };
        let have = self.fifo.len() / ch;
        let want = frames.unsigned_abs() as usize;
        // Silence is trimmed only in a pause: once it has lasted PAUSE_SEC.
        let pause = self.silent_run >= self.pause_frames;
        if frames > 0 {
            // Drop from the silent blocks at the head, as much as asked.
            let mut n = 0;
            while pause
                && n * block < want
                && (n + 1) * block <= have
                && silent(&self.fifo, n * block)
            {
                n += 1;
            }
            if n > 0 {
                let k = want.min(n * block);
                self.fifo.drain(..k * ch);
                return (k as u64, 0);
            }
            if !reshape {
                return (0, 0);
            }
            // Else cut one period, no longer than asked (the rest at the next look).
            match tsm::period(&self.fifo, ch, block, block, tsm_max_lag(want, block, true)) {
                Some(lag) => {
                    tsm::cut(&mut self.fifo, ch, lag, block);
                    (lag as u64, 0)
                }
                None => (0, 0),
            }
        } else {
            // Stretch a silent head with silence, or else repeat one period.
            if pause && have >= block && silent(&self.fifo, 0) {
                for _ in 0..want * ch {
                    self.fifo.push_front(0.0);
                }
                return (0, want as u64);
            }
            if !reshape {
                return (0, 0);
            }
            match tsm::period(
                &self.fifo,
                ch,
                block,
                block,
                tsm_max_lag(want, block, false),
            ) {
                Some(lag) => {
                    tsm::repeat(&mut self.fifo, ch, lag, block);
                    (0, lag as u64)
                }
                None => (0, 0),
            }
        }
    }

    /// The next `frames` frames of the FIFO are about to be played: counts the silence.
    fn note_played(&mut self, frames: usize) {
        let ch = self.channels;
        let n = frames.min(self.fifo.len() / ch);
        let silent = self.fifo.range(..n * ch).all(|v| v.abs() <= SILENCE_PEAK);
        self.silent_run = if silent { self.silent_run + n } else { 0 };
    }

    /// Forgets the stream (new stream, reconnect, pause): empties the FIFO and the resampler
    /// and goes back to buffering. The caller must also empty or recreate its ring (the
    /// device counters then restart from zero, which the engine notices).
    pub fn reset(&mut self) {
        self.ctl.reset();
        self.fifo.clear();
        self.resampler.reset();
        self.last_ts = None;
        self.silent_run = 0;
    }

    /// Statistics.
    pub fn stats(&self) -> PlayoutStats {
        self.ctl.stats()
    }

    /// See [`Controller::set_external_resampler`]: the audio passes through unresampled and
    /// the ring's reader applies [`PlayoutStats::ratio`].
    pub fn set_external_resampler(&mut self, on: bool) {
        self.ctl.set_external_resampler(on);
        if !on {
            self.ctl
                .set_delay_frames(self.resampler.output_delay() as f64);
        }
    }

    /// The sender posts its audio in blocks of `usec` µs: see [`Controller::set_sender_block`].
    pub fn set_sender_block_usec(&mut self, usec: u64) {
        let rate = u64::from(self.ctl.config().rate);
        self.ctl
            .set_sender_block((usec.saturating_mul(rate) + 500_000) / 1_000_000);
    }

    /// The control part.
    pub fn controller(&self) -> &Controller {
        &self.ctl
    }

    /// Resamples `input` (interleaved, whole chunks only) at a fixed `ratio`, outside any
    /// control: for tests and benchmarks of the audio path.
    pub fn resample_fixed(&mut self, ratio: f64, input: &[f32], out: &mut Vec<f32>) {
        let _ = self.resampler.set_resample_ratio(ratio, false);
        let ch = self.channels;
        for block in input.chunks_exact(self.chunk * ch) {
            for i in 0..self.chunk {
                for (c, buf) in self.inbuf.iter_mut().enumerate() {
                    buf[i] = block[i * ch + c];
                }
            }
            if let Ok((_, nout)) =
                self.resampler
                    .process_into_buffer(&self.inbuf, &mut self.outbuf, None)
            {
                for i in 0..nout {
                    for buf in &self.outbuf {
                        out.push(buf[i]);
                    }
                }
            }
        }
    }
}

/// The longest period [`tsm`] may cut (`cut`) or repeat for a trim of `want` frames, at most
/// 8 chunks (20 ms). A cut takes no more than asked: the best-matching period of a tone can be
/// any multiple of its own, and a cut past the target leaves the ring short of it (a start
/// whose excess was 10 ms lost 14 ms this way and concealed at the device's next pull). A
/// repeat may take half again as long as asked (a period rarely divides the shortfall; the
/// extra is latency, not a gap).
fn tsm_max_lag(want: usize, chunk: usize, cut: bool) -> usize {
    let most = if cut { want } else { want + want / 2 };
    most.min(8 * chunk)
}
