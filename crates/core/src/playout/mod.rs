//! Clock-drift correction at the receiving end: a buffer held at a target latency by
//! adaptive resampling (the Looking Glass technique of Fons Adriaensen, "Controlling adaptive
//! resampling" and "Using a DLL to filter time").
//!
//! # Where it runs
//!
//! The engine lives on the receiver's worker thread (one per connection). The worker tells it
//! about packet arrivals ([`Playout::on_packet`]: time, RTP timestamp, decoded PCM) and about
//! the sink's IO thread ([`Playout::on_device`]: time and counters the IO thread publishes
//! through atomics after every pop), asks it whether to run Opus PLC
//! ([`Playout::conceal_needed`], then [`Playout::on_conceal`] with the concealed PCM), and takes
//! the audio ready for the lock-free ring with [`Playout::produce`]. The IO thread only pops.
//!
//! # Control and audio are split
//!
//! [`Controller`] is the pure control part, driven by times and frame counts only: the two
//! DLLs ([`crate::dll::Dll`]: stream arrivals by RTP position, device consumption), the
//! latency estimate, the low-pass filter and PI controller producing the resampling ratio,
//! the slew decisions, concealment requests and target adaptation. It says what to do
//! through [`Plan`]; whoever holds the audio does it and reports back with
//! [`Controller::on_produced`]. [`Playout`] is a `Controller` plus the input FIFO and a
//! `rubato` sinc resampler. A simulation can drive a `Controller` with a counting model of
//! the resampler and run simulated days in seconds.
//!
//! # The latency and the loop
//!
//! All positions are in stream frames (samples per channel at `rate`). With `S(t)` the
//! stream DLL's line (where the stream "should" be at time `t`, its arrival jitter filtered
//! out), `V` the stream position of the next frame the resampler will read (the received end
//! position minus the FIFO; gaps, drops and inserted frames move it), `D` the resampler's
//! delay, `P` the frames produced and `C(t)` the device DLL's line of frames popped from the
//! ring, the latency is
//!
//! ```text
//! L(t) = S(t) − V + D + (P − C(t)) / ratio        frames, → seconds ÷ rate
//! ```
//!
//! `S` and `C` are estimates of exogenous clocks, so the loop is: `dL/dt = ratio − r*` (with
//! `r*` the ratio that matches the two clocks), error `e = L − target` low-pass filtered
//! (pole at `4·ωn`), PI controller `ratio = 1 + ff − Kp·e_f + I`, `I ← I − Ki·e_f·dt`, with
//! `Kp = 2·ωn`, `Ki = ωn²` (critically damped; see [`Pi`]) and `ff` the correction the two
//! DLLs' rates call for (fed forward once both have run [`FF_AFTER_SEC`]). The loop starts
//! wide and narrows with the time `τ` since it locked: `ωn = max(0.003, 1·T0/(T0 + τ))` rad/s
//! with `T0` = 10 s; the DLLs likewise from their (re)start, `max(0.0005, 0.5·0.8/(0.8 + τ))`
//! Hz. The output is clamped to ±[`MAX_CORRECTION`] and the integrator does not wind up while
//! the output saturates.
//!
//! Errors beyond [`SLEW_SEC`] (after a stall or a jump of the stream), or a latency above the
//! configured maximum, are not resampled away: the FIFO is *slewed* (frames dropped, or
//! silence inserted) straight to the target.
//!
//! # Underruns and the target
//!
//! When the buffer is about to run dry (a late packet), [`Playout::conceal_needed`] asks for
//! Opus PLC; the concealed frames stand in for the late audio (which is trimmed when it
//! arrives). Each such episode is counted as a concealment, and each underrun the device
//! reports as an underrun; both raise the target by one device period (bounded by
//! `max_usec`; a concealment adds the period at once by concealing one period more).
//! After [`STABLE_SEC`] without either, the target steps back down by one period toward the
//! configured target (the controller then resamples the excess away).
//!
//! # Starts and restarts
//!
//! The first second of playback is bursty on both sides: a device fills its own buffer with
//! its first pulls (PipeWire pulls whole 1024-frame quanta), and after a pause or a stall the
//! first packets are the oldest of a backlog that arrives in one burst. So: until the device
//! pulls, the engine holds the target (the oldest audio goes); the first start of a stream
//! holds [`START_HEADROOM_SEC`] more (a bursty sender's first packets are early ones); for
//! [`ACQUIRE_SEC`] after a restart the arrival line follows the earliest packet; while
//! playback starts an excess over [`START_CUT_SEC`] is cut and the ratio is held at what the
//! clock rates say; when the start is over the setpoint starts at the measured latency and
//! moves to the target at [`START_GLIDE`]; for [`ACQ_SEC`] after the first lock the
//! correction stays within [`ACQ_DEV`] of the clock rates, which the DLLs follow (phase only
//! before) and feed forward only after [`FF_AFTER_SEC`]. Before the device's first pull of
//! audio the ring term of the latency is negative by the part of its period the device has
//! already run through: its next pull takes that much of what comes.
//!
//! # Signs and units
//!
//! `ratio` = output frames per input frame (rubato's `fs_out / fs_in`). `drift_ppm =
//! (ratio − 1)·10⁶`: **positive when the receiving device runs faster than the sender's
//! clock** (the stream is stretched), negative when it runs slower. Times are microseconds
//! of the receiver's monotonic clock.

mod controller;
mod engine;
mod pi;
#[cfg(test)]
mod tests;

pub use controller::Controller;
pub use engine::{sinc_parameters, Playout};
pub use pi::Pi;

/// Largest correction the controller applies, as a fraction (±1 %, i.e. ±10 000 ppm).
pub const MAX_CORRECTION: f64 = 0.01;
/// Latency errors larger than this (seconds) are slewed instead of resampled.
pub const SLEW_SEC: f64 = 0.2;
/// For this long (seconds) after the stream restarts (a pause, a stall longer than the
/// concealment), the arrival line follows the earliest packet instead of averaging.
pub const ACQUIRE_SEC: f64 = 1.0;
/// For this long after the first lock (seconds) the loop's correction stays within
/// [`ACQ_DEV`] of what the clock rates call for.
pub const ACQ_SEC: f64 = 8.0;
/// See [`ACQ_SEC`]: 1000 ppm (1.7 cents).
pub const ACQ_DEV: f64 = 0.001;
/// The DLLs' rates feed the ratio forward once they have run this long (seconds).
pub const FF_AFTER_SEC: f64 = 3.0;
/// When playback starts, a latency error above this (seconds) is cut or padded at once.
pub const START_ALIGN_SEC: f64 = 0.003;
/// The first start holds this much latency (seconds) above the target until it is over,
/// then glides to the target at [`START_GLIDE`]: the first packets can be the early ones of
/// a sender that sends in bursts (a PipeWire sender's 20 ms packets ride 1024-frame quanta,
/// arriving in a 20 ms sawtooth), and the estimate only learns their mean arrival later.
/// The other 10 ms cover late packets while it does (the simulation of starts from a
/// PipeWire sender on a loaded machine concealed in 14 of 200 starts with 10 ms, none with 20).
pub const START_HEADROOM_SEC: f64 = 0.02;
/// While playback starts, an excess above this (seconds) is cut at once.
pub const START_CUT_SEC: f64 = 0.005;
/// A slew, once started, goes on until the error is under this (seconds).
pub const SLEW_DONE_SEC: f64 = 0.005;
/// The target steps down by one device period after this long (seconds) without underrun.
pub const STABLE_SEC: f64 = 60.0;
/// The worker must call [`Playout::conceal_needed`] at least this often (µs); the engine
/// keeps this much audio (plus one resampler chunk) ahead of the device before it asks for
/// concealment.
pub const WAKE_USEC: u64 = 12_000;
/// Slope at which the latency setpoint follows a changed target, seconds per second
/// (500 ppm: a 40 ms step takes 80 s and shifts the pitch by under a cent).
pub const GLIDE: f64 = 0.0005;
/// Slope at which the setpoint rises to the target when playback started short of it,
/// seconds per second (1000 ppm, 1.7 cents: 10 ms take 10 s).
pub const START_GLIDE: f64 = 0.001;
/// After this much audio concealed in a row (seconds) the stream is taken as paused: the
/// engine stops asking for concealment and buffers again when packets come back.
pub const MAX_CONCEAL_SEC: f64 = 0.5;

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

/// The loop's natural frequency ωn (rad/s), from the lock.
const LOOP_WN: Schedule = Schedule {
    start: 1.0,
    t0: 10.0,
    floor: 0.003,
};
/// The DLLs' bandwidth (Hz), from their (re)start: 0.4/(τ + 0.8 s) at first, about the gains
/// of a least-squares line fit over all the points so far.
const DLL_BW: Schedule = Schedule {
    start: 0.5,
    t0: 0.8,
    floor: 0.0005,
};

/// Configuration of a [`Playout`] / [`Controller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Sample rate of the stream and of the device, Hz (1000–384000).
    pub rate: u32,
    /// Interleaved channels (1–8).
    pub channels: u8,
    /// Latency to hold, µs (buffered audio between the network and the device: FIFO,
    /// resampler and ring). At least 5 ms.
    pub target_usec: u64,
    /// Upper bound of the adaptive target and of the buffered audio, µs (≥ `target_usec`,
    /// at most 10 s). The caller's ring must hold at least this plus two device periods.
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
        if self.target_usec < 5_000 {
            return bad("target_usec", self.target_usec, "at least 5000");
        }
        if self.max_usec < self.target_usec || self.max_usec > 10_000_000 {
            return bad("max_usec", self.max_usec, "target_usec … 10 000 000");
        }
        Ok(())
    }
}

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayoutState {
    /// Collecting audio up to the target before playing (start, after a reset or a pause).
    Buffering,
    /// Holding the target by resampling.
    Locked,
    /// A large error is being corrected by dropping or inserting frames.
    Slewing,
}

/// Figures of a [`Playout`] / [`Controller`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayoutStats {
    /// Buffered audio (FIFO + resampler delay + ring, arrival jitter filtered), µs.
    pub latency_usec: u64,
    /// The current (adapted) target, µs.
    pub target_usec: u64,
    /// `(ratio − 1)·10⁶`; positive when the device runs faster than the sender.
    pub drift_ppm: f64,
    /// Resampling ratio, output frames per input frame.
    pub ratio: f64,
    /// Underruns the device reported while playing (frames missing at the ring).
    pub underruns: u64,
    /// Concealment episodes: the stream was late and the engine asked for PLC.
    pub concealments: u64,
    /// Frames concealed (PLC) in all.
    pub concealed_frames: u64,
    /// Slews: times frames were dropped (too much audio) or silence inserted (too little).
    pub overruns: u64,
    /// Frames dropped by slewing.
    pub dropped_frames: u64,
    /// Frames of silence inserted by slewing.
    pub inserted_frames: u64,
    /// Frames of late packets thrown away because PLC had already stood in for them.
    pub late_frames: u64,
    /// Discontinuities of the stream position (jumps the engine re-anchored on).
    pub discontinuities: u64,
    /// State.
    pub state: PlayoutState,
}

/// What the audio part must do now (from [`Controller::plan`]), in this order.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plan {
    /// Drop this many frames from the head of the FIFO.
    pub drop_frames: u64,
    /// Insert this many frames of silence at the head of the FIFO.
    pub insert_frames: u64,
    /// Then pass this many frames (a multiple of the chunk) through the resampler.
    pub feed_frames: u64,
    /// At this ratio (output per input frame).
    pub ratio: f64,
}
