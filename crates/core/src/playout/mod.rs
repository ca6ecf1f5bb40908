//! The receive buffer: audio held at a latency it sizes itself, played out at the device's
//! clock by adaptive resampling.
//!
//! # Where it runs
//!
//! The engine lives on the receiver's worker thread (one per connection). The worker tells it
//! about packet arrivals ([`Playout::on_packet`]: time, RTP timestamp, decoded PCM) and about
//! the sink's IO thread ([`Playout::on_device`]: time and counters the IO thread publishes
//! after every pop), asks it whether to run Opus PLC ([`Playout::conceal_needed`], then
//! [`Playout::on_conceal`]), and takes the audio ready for the lock-free ring with
//! [`Playout::produce`]. The IO thread only pops.
//!
//! # Parts
//!
//! - [`Clock`] (twice): a clock seen through jittery observations — the stream through packet
//!   arrivals, the device through its pulls from the second on (the first shows when the
//!   device started, not its pace). Jitter only ever makes an observation late, so a
//!   clock is the line of its *earliest* observations of the last 2 s, at the rate the
//!   [`SkewEstimator`] learnt for it (at its nominal rate, a clock 1000 ppm off drifts 2 ms
//!   across the window, which read as lateness).
//! - [`TargetAdapter`]: the latency to hold. Auto: the longest a packet's first frame waited
//!   in the last 10 s — its lateness against the stream's line (the link, the sender's blocks
//!   and wake-ups, our own wake-ups) plus the packet's length — and what the engine needs
//!   itself (the resampler's look-ahead, a 4 ms guard), within `[min, max]`. Or a fixed
//!   figure.
//! - [`Controller`]: the phases (idle → buffering → playing), the latency, the loop, the
//!   trims and the concealment requests, driven by times and frame counts only; a
//!   simulation runs days of it in seconds.
//! - [`Playout`]: a controller plus the audio — the input FIFO, silence trimming and a
//!   `rubato` sinc resampler.
//! - [`Expander`] (on the device's thread, in `decode::Playback`): what the device plays where
//!   the ring runs short — the last pitch period played, repeated and fading out over 50 ms,
//!   crossfaded back into the stream when its audio comes — instead of digital silence.
//!
//! # The latency
//!
//! All positions are in stream frames. With `S(t)` the stream's line (where its earliest
//! packets put it), `V` the stream position of the next frame the resampler reads, `D` the
//! resampler's delay, `P` the frames produced into the ring and `C(t)` the device's line of
//! frames pulled (minus those it found missing):
//!
//! ```text
//! L(t) = S(t) − V + D + (P − C(t)) / ratio
//! ```
//!
//! the time from a frame's earliest possible arrival to the device's pull of it. Both lines
//! are smooth, so `L` moves only when the buffer really changes. A packet of `n` frames that
//! comes `r` late plays in time as long as `r + n < L − D`: the target is exactly that.
//!
//! # Holding the target
//!
//! - **Start.** Playout starts with the first frame received once the device pulls and
//!   waiting has brought `L` to within one wake-up ([`WAKE_USEC`]) of the target; that last
//!   part is silence ahead of the audio, put into the ring, and covers the part of the
//!   device's period its next pull takes from the new audio (`L` as it reads once the audio
//!   plays). A pull that finds the ring empty before the audio reaches it is no underrun. Audio that comes while it waits counts toward `L`
//!   (nothing received is cut). Nothing is assumed at a start: the first packet sizes the
//!   target.
//! - **Drift.** `ratio = 1 + skew + correction`. The [`SkewEstimator`] learns the skew as the
//!   ratio of the two clocks' rates against ours — the stream's (packet arrivals by RTP
//!   position) and the device's (its pulls) — each the slope of a line through the clock's
//!   earliest observation of each second over the last 30 s; until those lines span 3 s, lines
//!   through each quarter second's earliest give a first skew once it is known within 250 ppm
//!   and twice its error (about a second in at 2000 ppm), withdrawn when an observation comes
//!   well before its line (a sender that fell behind and caught up). Neither the latency nor the
//!   loop's correction, trims or concealments enter it, so none of them bends it. The [`LoopFilter`]'s correction is `−gain · error`, at most
//!   ±1000 ppm (1.7 cents), and ±200 ppm for [`AFTER_CONCEAL_SEC`] after a concealment once
//!   the start ([`START_SEC`]) is over; the gain narrows from 2/s to 0.1/s over the first
//!   half minute.
//! - **Steps of the target.** An error beyond ±[`TRIM_SEC`] is dropped or inserted where it
//!   does not show: in pauses (blocks of 2.5 ms below −60 dBFS, after [`PAUSE_SEC`] of them),
//!   exactly; beyond
//!   [`RESHAPE_SEC`] also by cutting one whole period where the audio repeats itself (a tone,
//!   a held note: [`tsm`]), or repeating one to give back what the engine took: after an
//!   underrun, or within [`UNDO_CUT_SEC`] of a cut (a target that rose without a loss is met
//!   in silence and by the loop).
//!   In audio that does neither (noise, dense music) the correction works on it.
//! - **Late audio.** When the buffer is about to run dry the engine asks for PLC, which stands
//!   in for the late audio; when that audio comes it is played too (the latency grows by the
//!   concealed time, as the late packet shows it must), unless that passes the maximum. A
//!   lost packet is no evidence of lateness: what stands in for it (FEC, parity, the
//!   decoder's concealment) adds only the part the engine has not concealed yet, and so does
//!   the packet after it if it came before its turn at the target (the engine conceals for
//!   the device's next pull at once, which can run on into that packet's time).
//!   After [`MAX_CONCEAL_SEC`] of concealment the stream is taken as paused.
//! - **The maximum.** A latency beyond `max` is cut from the oldest audio, down to the target.
//!
//! # Signs and units
//!
//! `ratio` = output frames per input frame (rubato's `fs_out / fs_in`). `drift_ppm =
//! (ratio − 1)·10⁶`: **positive when the receiving device runs faster than the sender's
//! clock** (the stream is stretched). Times are microseconds of the receiver's monotonic
//! clock.

mod clock;
mod controller;
mod engine;
mod expand;
mod pi;
mod skew;
mod target;
#[cfg(test)]
mod tests;
pub mod tsm;
mod window;

pub use clock::Clock;
pub use controller::Controller;
pub use engine::{sinc_parameters, Playout};
pub use expand::Expander;
pub use pi::LoopFilter;
pub use skew::{LineFit, SkewEstimator};
pub use target::{Target, TargetAdapter};
pub use window::{DecayingMax, SlidingMin};

/// Largest ratio correction of any kind, as a fraction (±1 %): the clocks' skew included.
pub const MAX_CORRECTION: f64 = 0.01;
/// The most the loop adds to the skew (±1000 ppm, 1.7 cents) …
pub const START_CORRECTION: f64 = 0.001;
/// … and for [`AFTER_CONCEAL_SEC`] after a concealment once the start is over (±200 ppm, a
/// third of a cent).
pub const CORRECTION: f64 = 0.0002;
/// How long a start lasts, seconds.
pub const START_SEC: f64 = 10.0;
/// See [`CORRECTION`], seconds.
pub const AFTER_CONCEAL_SEC: f64 = 10.0;
/// Latency errors beyond this (seconds) are dropped or inserted where the audio is silent
/// (the loop's resampling would stretch the audio around them instead: a 2 ms error at the
/// start's 1000 ppm takes 2 s of speech).
pub const TRIM_SEC: f64 = 0.001;
/// Latency errors beyond this (seconds) are also cut (or, after an underrun, repeated) as one
/// period of audio that repeats itself.
pub const RESHAPE_SEC: f64 = 0.002;
/// For this long (seconds) after a period was cut, a shortfall may be made up by repeating a
/// period: the excess that was cut may have been the stream's line moving for a while (one
/// packet earlier than the rest moves it for [`Clock::ENVELOPE_SEC`](clock::Clock)), and
/// what the engine took it gives back at once rather than by the loop (a drift test on a
/// busy machine sat 2.5-4 ms under its target for 10 s).
pub const UNDO_CUT_SEC: f64 = 2.0 * clock::Clock::ENVELOPE_SEC;
/// A shortfall beyond this (seconds) is made up by repeating periods, loss or not: the loop's
/// ±1000 ppm would take five seconds over it, and a packet as late as the one that raised the
/// target would be concealed meanwhile. (A PipeWire sender whose 21.3 ms quanta carry 20 ms
/// packets sends each packet 1.3 ms later than the one before against the stream's clock, up
/// to 20 ms, where a quantum carries two and the ramp starts again: its receiver's target rose
/// 20 ms in the first half second, the latency then climbed 1 ms a second, and the next ramp's
/// late packets were concealed, or in a CI run on a busy host played 5 ms of silence. Smaller
/// steps, such as one packet a few ms late on a loaded host, are left to silence and the
/// loop: see [`PAUSE_SEC`].)
pub const REPEAT_SEC: f64 = 0.005;
/// A clock's earliest observation jumping by more than this from one second to the next,
/// beyond the line's slope (seconds), is a step of its level, not drift (the
/// [`SkewEstimator`] takes the slope it has learnt out of the jump).
pub const LINE_STEP_SEC: f64 = 0.001;
/// A device silent for longer than this (seconds) has stopped: its line starts afresh.
pub const DEVICE_GAP_SEC: f64 = 0.5;
/// The worker calls [`Playout::conceal_needed`] at least this often (µs), and sooner when
/// [`Playout::wake_in_usec`] says so.
pub const WAKE_USEC: u64 = 10_000;
/// The engine conceals when the device's line comes this close (µs) to the end of the audio
/// (plus the resampler's look-ahead): what the worker's own wake-up may be late by. The
/// target keeps [`TargetAdapter::GUARD_SEC`] more than the lateness it measured, so a packet
/// no later than those comes before the engine conceals.
pub const CONCEAL_GUARD_USEC: u64 = 1_000;
/// After this much audio concealed in a row (seconds) the stream is taken as paused: the
/// engine stops asking for concealment and buffers again when packets come back.
pub const MAX_CONCEAL_SEC: f64 = 0.5;
/// A block whose peak is under this (−60 dBFS) is silence that may be dropped or stretched …
pub const SILENCE_PEAK: f32 = 0.001;
/// … once the audio has been silent for this long (seconds): in a pause between words, not
/// in the quiet tail of a word or a stop's closure. PESQ-WB of the bench speech (16 s, five
/// sentences) with 2.1 ms of silence inserted once, at the first chance in each pause
/// (`scripts/pause_trims.py`): after 20 ms of silence 4.52–4.64 (17 places), after 50 ms
/// 4.56–4.64 (9), after 100 ms 4.639–4.643 (6) against 4.644 untouched. With 20 ms a PCM
/// stream's score fell to 4.51–4.58 in 2 of 16 bench sessions (`BENCH_ONLY=pcm`), each time
/// after a trim that a late packet's target step asked for.
pub const PAUSE_SEC: f64 = 0.1;

/// A gain that narrows with the time `τ` since it started: `max(floor, start·t0/(t0 + τ))`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: f64,
    t0: f64,
    floor: f64,
}

impl Schedule {
    /// The value `tau` seconds after the start (a negative `tau` counts as 0).
    fn at(&self, tau: f64) -> f64 {
        (self.start * self.t0 / (self.t0 + tau.max(0.0))).max(self.floor)
    }
}

/// The loop's gain (1/s: ratio correction per second of latency error) from the start of
/// playout: quick while a start settles, slow once it has.
const LOOP_GAIN: Schedule = Schedule {
    start: 2.0,
    t0: 3.0,
    floor: 0.1,
};

/// Configuration of a [`Playout`] / [`Controller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Sample rate of the stream and of the device, Hz (1000–384000).
    pub rate: u32,
    /// Interleaved channels (1–8).
    pub channels: u8,
    /// The latency to hold (from a frame's earliest arrival to the device's pull of it).
    pub target: Target,
    /// Lower bound of the target, µs.
    pub min_usec: u64,
    /// Upper bound of the target and of the buffered audio, µs (≥ `min_usec` and a fixed
    /// target, at most 10 s). The caller's ring must hold at least this plus two device
    /// periods.
    pub max_usec: u64,
}

/// A configuration the engine cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlayoutError {
    /// A field of [`PlayoutConfig`] is out of range.
    #[error("playout: {field} = {value} out of range: {expected}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
    /// rubato refused to build the resampler.
    #[error("playout: resampler: {0}")]
    Resampler(String),
}

impl PlayoutConfig {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<(), PlayoutError> {
        let bad = |field, value: u64, expected| {
            Err(PlayoutError::Config {
                field,
                value,
                expected,
            })
        };
        if !(1_000..=384_000).contains(&self.rate) {
            return bad("rate", self.rate.into(), "1000–384000 Hz");
        }
        if !(1..=8).contains(&self.channels) {
            return bad("channels", self.channels.into(), "1–8");
        }
        if self.max_usec < 1_000 || self.max_usec > 10_000_000 {
            return bad("max_usec", self.max_usec, "1000 … 10 000 000");
        }
        if self.min_usec > self.max_usec {
            return bad("min_usec", self.min_usec, "at most max_usec");
        }
        if let Target::Fixed(t) = self.target {
            if t < 1_000 || t > self.max_usec {
                return bad("target", t, "1000 … max_usec");
            }
        }
        Ok(())
    }
}

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayoutState {
    /// No audio, or collecting it up to the target before playing (start, after a reset or a
    /// pause).
    Buffering,
    /// Playing, holding the target.
    Playing,
}

/// Figures of a [`Playout`] / [`Controller`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayoutStats {
    /// The latency (see the module documentation), µs: from the earliest arrival of a packet's
    /// end to the device's pull of it. The buffer's mean fill is this less half a packet.
    pub latency_usec: u64,
    /// The latest packet's length, µs.
    pub packet_usec: u64,
    /// The current (adapted) target, µs.
    pub target_usec: u64,
    /// The clocks' drift the engine has learnt (the ratio that holds the latency still, − 1,
    /// ×10⁶): positive when the device runs faster than the sender. The ratio in force adds the
    /// latency correction to it.
    pub drift_ppm: f64,
    /// Resampling ratio, output frames per input frame.
    pub ratio: f64,
    /// Underruns the device reported while playing (frames missing at the ring).
    pub underruns: u64,
    /// Concealment episodes: the stream was late and the engine asked for PLC.
    pub concealments: u64,
    /// Frames concealed (PLC) in all.
    pub concealed_frames: u64,
    /// Times audio was cut because the latency passed the maximum.
    pub overruns: u64,
    /// Frames dropped: silence trimmed, and audio cut beyond the maximum.
    pub dropped_frames: u64,
    /// Frames of silence inserted.
    pub inserted_frames: u64,
    /// Frames of silence dropped or inserted to follow the target.
    pub trimmed_frames: u64,
    /// Frames of late packets thrown away (PLC stood in for them and keeping them would pass
    /// the maximum latency).
    pub late_frames: u64,
    /// Discontinuities of the stream position (jumps the engine re-anchored on).
    pub discontinuities: u64,
    /// State.
    pub state: PlayoutState,
}

/// What the audio part must do now (from [`Controller::plan`]), in this order.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plan {
    /// Drop this many frames from the head of the FIFO (the latency passed the maximum).
    pub drop_frames: u64,
    /// Put this many frames of silence into the ring, ahead of what the resampler makes
    /// (playout starts: the wait up to the target). They are output frames: the silence
    /// leaves the FIFO a whole number of chunks, so none of its audio waits for a chunk to
    /// fill (the controller has counted them as produced).
    pub insert_frames: u64,
    /// Then, where the audio about to be fed is silent: drop up to this many frames
    /// (positive) or insert this many frames of silence (negative); report with
    /// [`Controller::on_trimmed`].
    pub trim_frames: i64,
    /// Where it is not silent, the trim may cut one period of the audio (or, after an
    /// underrun, repeat one).
    pub reshape: bool,
    /// Then pass this many frames (a multiple of the chunk) through the resampler.
    pub feed_frames: u64,
    /// At this ratio (output per input frame).
    pub ratio: f64,
}
