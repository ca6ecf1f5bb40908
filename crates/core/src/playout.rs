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
//! (pole at `4·ωn`), PI controller `ratio = 1 − Kp·e_f − Ki·∫e_f` with `Kp = 2·ωn`,
//! `Ki = ωn²` (critically damped). The loop starts wide (`ωn` = 0.5 rad/s, DLLs 0.5 Hz) to lock
//! within seconds and narrows as `1/(1 + τ/τ0)` to `ωn` = 0.01 rad/s and DLLs of 0.002 Hz, so
//! that once locked the ratio moves by well under a ppm. The integrator is clamped (no wind-up
//! while the output saturates at ±[`MAX_CORRECTION`]).
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

use crate::dll::Dll;
use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};
use std::collections::VecDeque;

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

// Loop schedule: ωn(τ) = max(WN_MIN, WN0·T0/(T0+τ)), DLL bandwidth likewise.
const WN0: f64 = 1.0;
const WN_MIN: f64 = 0.003;
const DLL_BW0: f64 = 0.5;
const DLL_BW_MIN: f64 = 0.0005;
// DLL bandwidth 0.4/(τ + 0.8 s): about the gains of a least-squares line fit over all
// the points so far.
const DLL_T0: f64 = 0.8;
const SCHED_T0: f64 = 10.0;

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

/// The loop filter and PI controller of the ratio: a first-order low-pass on the latency
/// error (pole at `4·ωn`), then `u = ff − Kp·e_f + I`, `I ← I − Ki·e_f·dt` with `Kp = 2·ωn`,
/// `Ki = ωn²` (critically damped with the integrating plant `dL/dt = u − u*`). The output
/// is clamped to ±[`MAX_CORRECTION`]; the integrator is clamped too and does not integrate
/// while the output is saturated in the direction it would push (no wind-up).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pi {
    /// Filtered error, seconds.
    pub filt: f64,
    /// Integrator, ratio units.
    pub integ: f64,
}

impl Pi {
    /// One step: latency error `e` (seconds, positive = too much audio), feed-forward
    /// correction `ff` (ratio units), time step `dt` (s), natural frequency `wn` (rad/s).
    /// Returns the correction `ratio − 1`.
    pub fn update(&mut self, e: f64, ff: f64, dt: f64, wn: f64) -> f64 {
        self.update_within(e, ff, dt, wn, 2.0 * MAX_CORRECTION)
    }

    /// As [`update`](Self::update), with the output also kept within `dev` of `ff` (the loop
    /// may not move the pitch further from what the clock rates call for); the integrator
    /// does not wind up against either bound.
    pub fn update_within(&mut self, e: f64, ff: f64, dt: f64, wn: f64, dev: f64) -> f64 {
        let wf = 4.0 * wn;
        self.filt += (wf * dt).min(1.0) * (e - self.filt);
        let kp = 2.0 * wn;
        let ki = wn * wn;
        let p = -kp * self.filt;
        let cand = self.integ - ki * self.filt * dt;
        let lo = (ff - dev).max(-MAX_CORRECTION);
        let hi = (ff + dev).min(MAX_CORRECTION);
        let out_now = ff + p + self.integ;
        let step = cand - self.integ;
        let pushes_out = (step > 0.0 && out_now >= hi) || (step < 0.0 && out_now <= lo);
        if !pushes_out {
            self.integ = cand.clamp(-MAX_CORRECTION, MAX_CORRECTION);
        }
        (ff + p + self.integ).clamp(lo.min(hi), hi.max(lo))
    }
}

/// The control part: DLLs, latency estimate, filter, PI, slews, concealment, target.
/// Driven by times and frame counts only; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: PlayoutConfig,
    rate: f64,
    chunk: u64,
    quantum: u64,
    delay: f64,
    t_origin: Option<u64>,
    stream: Dll,
    device: Dll,
    stream_t_start: f64,
    device_t_start: f64,
    acquire_until: f64,
    device_first_t: Option<f64>,
    /// The latest time the controller was told about (packet or device report), s.
    now_t: f64,
    /// Slope of the setpoint toward the target ([`GLIDE`], or [`START_GLIDE`] at a start).
    glide_rate: f64,
    /// A start is under way: look at a shortfall when it is over.
    start_pending: bool,
    // stream positions
    have_pos: bool,
    next_pos: i64,
    fifo: u64,
    // device side
    produced: u64,
    consumed: u64,
    missing: u64,
    have_device: bool,
    dev_last: u64,
    period: f64,
    // loop
    state: PlayoutState,
    locked_once: bool,
    /// Latency held above the target while the first start is under way, frames.
    headroom: f64,
    lock_t: f64,
    last_tick: f64,
    pi: Pi,
    ratio: f64,
    slew: i64,
    // target
    target: f64,
    setpoint: f64,
    base_target: f64,
    max_frames: f64,
    stable_since: f64,
    in_conceal: bool,
    episode_conceal: u64,
    pending_insert: u64,
    episode_raise: u64,
    /// The slew under way aligns a (re)start: not counted as an overrun.
    aligning: bool,
    // counters
    underruns: u64,
    concealments: u64,
    concealed_frames: u64,
    overruns: u64,
    dropped: u64,
    inserted: u64,
    late: u64,
    discontinuities: u64,
    // external resampler (see `set_external_resampler`)
    external: bool,
    ext_raw_consumed: u64,
    ext_raw_missing: u64,
    ext_consumed: f64,
    ext_missing: f64,
    ext_produced: f64,
}

fn usec_to_frames(usec: u64, rate: f64) -> f64 {
    usec as f64 * 1e-6 * rate
}

impl Controller {
    /// A controller for `cfg` whose resampler delays the audio by `delay_frames` input frames
    /// and reads it in chunks of `chunk_frames` (≥ 1).
    pub fn new(
        cfg: PlayoutConfig,
        chunk_frames: usize,
        delay_frames: f64,
    ) -> Result<Controller, PlayoutError> {
        cfg.validate()?;
        let rate = f64::from(cfg.rate);
        let target = usec_to_frames(cfg.target_usec, rate);
        Ok(Controller {
            cfg,
            rate,
            chunk: chunk_frames.max(1) as u64,
            quantum: u64::from(cfg.rate / 400).max(1),
            delay: delay_frames.max(0.0),
            t_origin: None,
            stream: Dll::new(rate, DLL_BW0),
            device: Dll::new(rate, DLL_BW0),
            stream_t_start: 0.0,
            device_t_start: 0.0,
            acquire_until: f64::NEG_INFINITY,
            device_first_t: None,
            now_t: 0.0,
            glide_rate: GLIDE,
            start_pending: false,
            have_pos: false,
            next_pos: 0,
            fifo: 0,
            produced: 0,
            consumed: 0,
            missing: 0,
            have_device: false,
            dev_last: 0,
            period: rate * 0.01,
            state: PlayoutState::Buffering,
            locked_once: false,
            headroom: 0.0,
            lock_t: 0.0,
            last_tick: 0.0,
            pi: Pi::default(),
            ratio: 1.0,
            slew: 0,
            target,
            setpoint: target,
            base_target: target,
            max_frames: usec_to_frames(cfg.max_usec, rate),
            stable_since: 0.0,
            in_conceal: false,
            episode_conceal: 0,
            pending_insert: 0,
            episode_raise: 0,
            aligning: false,
            underruns: 0,
            concealments: 0,
            concealed_frames: 0,
            overruns: 0,
            dropped: 0,
            inserted: 0,
            late: 0,
            discontinuities: 0,
            external: false,
            ext_raw_consumed: 0,
            ext_raw_missing: 0,
            ext_consumed: 0.0,
            ext_missing: 0.0,
            ext_produced: 0.0,
        })
    }

    /// External resampler mode: the audio is not resampled by the caller (it passes the
    /// FIFO through at ratio 1, with no resampler delay) and whatever plays the ring applies
    /// [`ratio`](Self::ratio) itself (output frames per input frame; e.g. PipeWire's adapter
    /// through rate matching). The ring then holds stream frames and the device reports
    /// stream frames; the controller converts both to device frames with the ratio in force
    /// (`n · ratio`), so its device DLL, feed-forward and latency see the device's own clock
    /// as with the internal resampler. Survives [`reset`](Self::reset).
    pub fn set_external_resampler(&mut self, on: bool) {
        self.external = on;
        if on {
            self.delay = 0.0;
        }
    }

    /// Whether the external resampler mode is on.
    pub fn external_resampler(&self) -> bool {
        self.external
    }

    /// The configuration.
    pub fn config(&self) -> PlayoutConfig {
        self.cfg
    }

    /// Forgets the stream and the device (new stream, reconnect): back to buffering with the
    /// configured target. Counters are kept.
    pub fn reset(&mut self) {
        let mut fresh = match Controller::new(self.cfg, self.chunk as usize, self.delay) {
            Ok(c) => c,
            Err(_) => return,
        };
        fresh.underruns = self.underruns;
        fresh.concealments = self.concealments;
        fresh.concealed_frames = self.concealed_frames;
        fresh.overruns = self.overruns;
        fresh.dropped = self.dropped;
        fresh.inserted = self.inserted;
        fresh.late = self.late;
        fresh.discontinuities = self.discontinuities;
        fresh.external = self.external;
        *self = fresh;
    }

    fn secs(&mut self, now_usec: u64) -> f64 {
        let origin = *self.t_origin.get_or_insert(now_usec);
        (now_usec as f64 - origin as f64) * 1e-6
    }

    fn secs_ro(&self, now_usec: u64) -> f64 {
        match self.t_origin {
            Some(o) => (now_usec as f64 - o as f64) * 1e-6,
            None => 0.0,
        }
    }

    fn sched(&self, t: f64, start: f64, t0: f64, v0: f64, vmin: f64) -> f64 {
        let tau = (t - start).max(0.0);
        (v0 * t0 / (t0 + tau)).max(vmin)
    }

    /// A packet of `frames` frames whose first frame has stream position `pos` (an extended,
    /// unwrapped sample position) arrived at `now_usec`. Returns how many leading frames to
    /// throw away (late: PLC already stood in for them); the rest goes to the FIFO.
    pub fn on_packet(&mut self, now_usec: u64, pos: i64, frames: u64) -> u64 {
        let t = self.secs(now_usec);
        self.now_t = self.now_t.max(t);
        let end = pos.saturating_add(frames as i64);
        if !self.have_pos {
            self.have_pos = true;
            self.next_pos = pos;
            if !self.stream.started() {
                self.stream_t_start = t;
            }
        }
        let d = pos.saturating_sub(self.next_pos);
        let max_gap = self.max_frames as i64;
        let mut skip = 0u64;
        if self.state == PlayoutState::Buffering && d != 0 {
            // Not playing: start over from this packet (pause, first packet).
            self.next_pos = pos;
            self.stream.rephase(t, end as f64);
            // What arrives first after a pause or a stall is the oldest of a backlog.
            self.acquire_until = t + ACQUIRE_SEC;
        } else if d > max_gap || d < -(self.rate as i64) {
            // A jump of the stream position: join the audio, keep the latency.
            self.discontinuities += 1;
            self.stream.shift(d as f64);
            self.next_pos = pos;
        } else if d < 0 {
            skip = (-d as u64).min(frames);
            self.late += skip;
        }
        let appended = frames - skip;
        self.fifo += appended;
        if appended > 0 {
            self.next_pos = end;
        }
        if !self.stream.started() {
            self.stream_t_start = t;
        }
        let bw = self.sched(t, self.stream_t_start, DLL_T0, DLL_BW0, DLL_BW_MIN);
        self.stream.set_bandwidth(bw);
        self.stream
            .set_hold_rate(t - self.stream_t_start < FF_AFTER_SEC);
        let rephases = self.stream.rephases();
        if t < self.acquire_until {
            // Re-acquiring after a restart: the line follows the earliest packet (a backlog
            // arriving in one burst moves its phase, not its rate).
            let e = end as f64 - self.stream.position_at(t);
            if e > 0.0 {
                self.stream.anchor(t, end as f64);
            }
        } else {
            self.stream.update(t, end as f64);
        }
        if self.stream.rephases() != rephases && self.state != PlayoutState::Buffering {
            // The stream clock jumped or changed: acquire its rate again, wide.
            self.stream_t_start = t;
        }
        if appended > 0 {
            // Fresh audio: a concealment episode (if any) is over.
            self.in_conceal = false;
            self.episode_conceal = 0;
            self.episode_raise = 0;
            self.pending_insert = 0;
        }
        skip
    }

    /// The device reported at `now_usec`: `consumed_total` frames popped from the ring so far
    /// and `missing_total` frames it asked for that the ring did not have (both cumulative
    /// since the ring was created). Runs one step of the control loop.
    pub fn on_device(&mut self, now_usec: u64, consumed_total: u64, missing_total: u64) {
        let (consumed_total, missing_total) = if self.external {
            self.ext_device_frames(consumed_total, missing_total)
        } else {
            (consumed_total, missing_total)
        };
        let t = self.secs(now_usec);
        self.now_t = self.now_t.max(t);
        if consumed_total < self.consumed || missing_total < self.missing {
            // The ring was recreated under us: start the device side again.
            self.device.reset();
            self.have_device = false;
            self.device_first_t = None;
            self.produced = self.produced.saturating_sub(self.consumed);
            self.consumed = 0;
            self.missing = 0;
        }
        let new_missing = missing_total - self.missing;
        self.consumed = consumed_total;
        self.missing = missing_total;
        let dev_pos = consumed_total.saturating_add(missing_total);
        if !self.have_device {
            self.have_device = true;
            self.device_t_start = t;
            if dev_pos > 0 {
                self.device_first_t = Some(t);
            }
            self.dev_last = dev_pos;
            self.device.update(t, dev_pos as f64);
            self.last_tick = t;
            return;
        }
        if self.device_first_t.is_none() && dev_pos > 0 {
            self.device_first_t = Some(t);
        }
        let delta = dev_pos.saturating_sub(self.dev_last);
        self.dev_last = dev_pos;
        if delta > 0 && (delta as f64) < self.rate {
            self.period += 0.1 * (delta as f64 - self.period);
        }
        let bw = self.sched(t, self.device_t_start, DLL_T0, DLL_BW0, DLL_BW_MIN);
        self.device.set_bandwidth(bw);
        self.device
            .set_hold_rate(t - self.device_t_start < FF_AFTER_SEC);
        let rephases = self.device.rephases();
        self.device.update(t, dev_pos as f64);
        if self.device.rephases() != rephases {
            // The device stopped, or its clock changed: acquire its rate again, wide.
            self.device_t_start = t;
        }

        let dt = (t - self.last_tick).clamp(0.0, 1.0);
        self.last_tick = t;
        if self.state == PlayoutState::Buffering {
            return;
        }
        if new_missing > 0 {
            self.underruns += 1;
            self.raise_target(t, false);
        }
        self.adapt_target(t);
        self.control(t, dt);
    }

    /// External resampler: the device's stream-frame totals → device-frame totals (each new
    /// frame counts `ratio` device frames).
    fn ext_device_frames(&mut self, consumed_raw: u64, missing_raw: u64) -> (u64, u64) {
        if consumed_raw < self.ext_raw_consumed || missing_raw < self.ext_raw_missing {
            // The ring was recreated: on_device starts the device side again.
            self.ext_produced -= self.ext_consumed.min(self.ext_produced);
            self.ext_consumed = 0.0;
            self.ext_missing = 0.0;
            self.ext_raw_consumed = 0;
            self.ext_raw_missing = 0;
        }
        self.ext_consumed += (consumed_raw - self.ext_raw_consumed) as f64 * self.ratio;
        self.ext_missing += (missing_raw - self.ext_raw_missing) as f64 * self.ratio;
        self.ext_raw_consumed = consumed_raw;
        self.ext_raw_missing = missing_raw;
        (
            self.ext_consumed.round() as u64,
            self.ext_missing.round() as u64,
        )
    }

    /// Raises the target by one device period (bounded); with `inserted` the caller adds
    /// that much audio at once and the setpoint jumps, otherwise it glides. Returns the
    /// frames the target rose by.
    fn raise_target(&mut self, t: f64, inserted: bool) -> u64 {
        self.stable_since = t;
        let old = self.target;
        self.target =
            (self.target + self.period.round()).min(self.max_frames.max(self.base_target));
        let up = (self.target - old).max(0.0).round();
        if inserted {
            self.setpoint += up;
        }
        up as u64
    }

    fn adapt_target(&mut self, t: f64) {
        if t - self.stable_since >= STABLE_SEC && self.target > self.base_target {
            self.target = (self.target - self.period.round()).max(self.base_target);
            self.stable_since = t;
        }
    }

    /// Latency in stream frames at time `t` (seconds since origin).
    fn latency_frames_at(&self, t: f64) -> f64 {
        let v = self.next_pos as f64 - self.fifo as f64;
        let s = if self.stream.started() {
            self.stream.position_at(t)
        } else {
            self.next_pos as f64
        };
        let popped = if self.have_device {
            (self.device.position_at(t) - self.missing as f64).max(self.consumed as f64)
        } else {
            self.consumed as f64
        };
        // Negative while the device runs ahead of an empty ring (before playback starts): its
        // next pull takes that much of what comes.
        let ring = self.produced as f64 - popped;
        s - v + self.delay + ring / self.ratio
    }

    fn control(&mut self, t: f64, dt: f64) {
        // While playback starts (the device's first pulls, the rest of a backlog) the estimate
        // jumps by whole device periods: an excess is cut (see `plan`), the loop holds its
        // ratio, and only once the start is over does it look at a shortfall (the device
        // filling its own buffer with its first pulls). Padding that would be a gap in the
        // sound and resampling it back at once a pitch shift: the setpoint starts where the
        // latency is and rises to the target at START_GLIDE.
        let starting = self.starting();
        if self.state == PlayoutState::Locked {
            if starting {
                self.start_pending = true;
            } else if self.start_pending {
                self.start_pending = false;
                self.headroom = 0.0;
                let lat = self.latency_frames_at(t);
                if (lat - self.setpoint).abs() > START_ALIGN_SEC * self.rate {
                    self.setpoint = lat.max(0.0);
                    self.glide_rate = START_GLIDE;
                } else if self.setpoint > self.target {
                    self.glide_rate = START_GLIDE;
                }
            }
        }
        // The setpoint follows the target, the ratio carrying the slope.
        let rate = self.glide_rate;
        let step = rate * self.rate * dt;
        // While starting the setpoint stays where the start put it.
        let glide = if starting {
            0.0
        } else if self.setpoint < self.target - step {
            self.setpoint += step;
            rate
        } else if self.setpoint > self.target + step {
            self.setpoint -= step;
            -rate
        } else {
            self.setpoint = self.target;
            self.glide_rate = GLIDE;
            0.0
        };
        let lat = self.latency_frames_at(t);
        let err = lat - self.setpoint;
        let slewing_on =
            self.state == PlayoutState::Slewing && err.abs() > SLEW_DONE_SEC * self.rate;
        if slewing_on || err.abs() > SLEW_SEC * self.rate || lat > self.max_frames {
            let aligning = slewing_on && self.aligning;
            self.start_slew(err);
            self.aligning = aligning;
            return;
        }
        if self.state == PlayoutState::Slewing {
            // Close enough again: whatever is left of the slew is the loop's job.
            self.state = PlayoutState::Locked;
            self.slew = 0;
        }
        let ff = self.feed_forward() + glide;
        if starting {
            // Hold: what the rates and the integrator already know, no reaction to the error.
            self.pi.filt = 0.0;
            self.ratio = 1.0 + (ff + self.pi.integ).clamp(-MAX_CORRECTION, MAX_CORRECTION);
            return;
        }
        let e = err / self.rate;
        let wn = self.sched(t, self.lock_t, SCHED_T0, WN0, WN_MIN);
        // While the loop acquires, it may not move the pitch by more than ACQ_DEV from what
        // the clock rates (and a glide) call for: the first seconds' estimates jump by whole
        // device periods, and the wide loop would turn each jump into a 1 % pitch shift.
        let dev = if t - self.lock_t < ACQ_SEC {
            ACQ_DEV
        } else {
            2.0 * MAX_CORRECTION
        };
        self.ratio = 1.0 + self.pi.update_within(e, ff, dt, wn, dev);
    }

    /// Whether playback is still starting: the device has not pulled yet or began less than
    /// [`ACQUIRE_SEC`] ago, or the stream restarted less than that ago. Until then an excess
    /// of latency is cut, not resampled (the first pulls of an idle sink and the rest of a
    /// backlog come in bursts).
    fn starting(&self) -> bool {
        let t = self.now_t;
        let device = match self.device_first_t {
            Some(t0) => t - t0 < ACQUIRE_SEC,
            None => true,
        };
        device || t < self.acquire_until + ACQUIRE_SEC
    }

    /// Starts (or continues) a slew of the latency straight to the target; `err` is the
    /// latency minus the setpoint, frames.
    fn start_slew(&mut self, err: f64) {
        let lat = err + self.setpoint;
        let home = self.target + self.headroom;
        self.slew = (lat - home).round() as i64;
        self.setpoint = home;
        self.state = PlayoutState::Slewing;
        self.pi.filt = 0.0;
        self.aligning = false;
    }

    /// The correction the two DLLs' rates call for (device rate / stream rate − 1), once
    /// both have run for [`FF_AFTER_SEC`] since they (re)started (a young DLL's rate follows
    /// the bursts of a start: a device that pulls whole quanta, a backlog); the PI corrects
    /// what is left.
    fn feed_forward(&self) -> f64 {
        let t = self.now_t;
        if self.stream.updates() < 20
            || self.device.updates() < 20
            || t - self.stream_t_start < FF_AFTER_SEC
            || t - self.device_t_start < FF_AFTER_SEC
        {
            return 0.0;
        }
        (self.device.rate() / self.stream.rate() - 1.0).clamp(-MAX_CORRECTION, MAX_CORRECTION)
    }

    /// What to do with the FIFO now; the caller executes it and then calls
    /// [`on_produced`](Self::on_produced) for what the resampler consumed and produced. The
    /// controller's FIFO count already reflects drops and inserts.
    pub fn plan(&mut self) -> Plan {
        let mut plan = Plan {
            ratio: self.ratio,
            ..Plan::default()
        };
        if self.state == PlayoutState::Buffering {
            let ring = self.produced.saturating_sub(self.consumed) as f64;
            if self.have_pos && self.fifo as f64 + ring >= self.target {
                self.state = PlayoutState::Locked;
                if !self.locked_once {
                    self.locked_once = true;
                    // The first start: the first packets may be the early ones of a sender
                    // that sends in bursts or a sawtooth; hold a little more until the
                    // estimate knows the mean.
                    self.headroom = (START_HEADROOM_SEC * self.rate)
                        .min(self.max_frames - self.target)
                        .max(0.0);
                    self.setpoint = self.target + self.headroom;
                    self.lock_t = self.last_tick;
                    self.stable_since = self.last_tick;
                }
                self.pi.filt = 0.0;
                // Playback starts: whatever the estimate says beyond a few ms of the target is
                // cut or padded at once (inaudible there), not resampled.
                let err = self.latency_frames_at(self.now_t) - self.setpoint;
                if err.abs() > START_ALIGN_SEC * self.rate {
                    self.start_slew(err);
                    self.aligning = true;
                }
            } else {
                return plan;
            }
        } else if self.state == PlayoutState::Locked {
            // A burst (the backlog after a stall) must not reach the ring before the next
            // device report would slew it: check here too, before feeding.
            let err = self.latency_frames_at(self.now_t) - self.setpoint;
            // Before the device pulls, hold the target (the oldest audio goes); for a second
            // after it starts (its first pulls come in bursts) or after a restart (the rest of
            // a backlog), cut an excess of more than a few periods at once.
            let cut_at = if self.device_first_t.is_none() {
                START_ALIGN_SEC
            } else if self.starting() {
                START_CUT_SEC
            } else {
                SLEW_SEC
            };
            if err > cut_at * self.rate || err + self.setpoint > self.max_frames {
                self.start_slew(err);
                self.aligning = err <= SLEW_SEC * self.rate;
            }
        }
        if self.state == PlayoutState::Slewing {
            if self.slew > 0 {
                let n = (self.slew as u64).min(self.fifo);
                self.fifo -= n;
                self.dropped += n;
                plan.drop_frames = n;
                self.slew -= n as i64;
            } else if self.slew < 0 {
                let n = self.slew.unsigned_abs();
                self.fifo += n;
                self.inserted += n;
                plan.insert_frames = n;
                self.slew = 0;
            }
            if self.slew == 0 {
                if !self.aligning {
                    self.overruns += 1;
                }
                self.aligning = false;
                self.state = PlayoutState::Locked;
            }
        }
        plan.feed_frames = self.fifo / self.chunk * self.chunk;
        plan
    }

    /// The resampler read `input_frames` from the FIFO and produced `output_frames`.
    pub fn on_produced(&mut self, input_frames: u64, output_frames: u64) {
        self.fifo = self.fifo.saturating_sub(input_frames);
        if self.external {
            // Stream frames into the ring: they will play as `ratio` device frames each.
            self.ext_produced += output_frames as f64 * self.ratio;
            self.produced = self.ext_produced.round() as u64;
        } else {
            self.produced = self.produced.saturating_add(output_frames);
        }
    }

    /// Whether to conceal now, and how many frames (a multiple of 2.5 ms, for Opus PLC): the
    /// buffered audio is about to run out before the next wake-up ([`WAKE_USEC`]) and no
    /// packet has come. Feed the concealed PCM with [`on_conceal`](Self::on_conceal).
    pub fn conceal_needed(&self, now_usec: u64) -> Option<usize> {
        if self.state == PlayoutState::Buffering || !self.have_device {
            return None;
        }
        if self.episode_conceal as f64 >= MAX_CONCEAL_SEC * self.rate {
            return None;
        }
        let t = self.secs_ro(now_usec);
        let popped = (self.device.position_at(t) - self.missing as f64).max(self.consumed as f64);
        let ring = (self.produced as f64 - popped).max(0.0);
        let usable = ring + (self.fifo / self.chunk * self.chunk) as f64 * self.ratio;
        let guard = usec_to_frames(WAKE_USEC, self.rate) + self.delay;
        if usable >= guard {
            return None;
        }
        let mut need = guard - usable + self.chunk as f64;
        if !self.in_conceal {
            let room = (self.max_frames.max(self.base_target) - self.target).max(0.0);
            need += self.period.round().min(room);
        }
        let q = self.quantum;
        let n = ((need.ceil() as u64).div_ceil(q) * q).clamp(q, u64::from(self.cfg.rate));
        Some(n as usize)
    }

    /// `frames` concealed frames were appended to the FIFO (after
    /// [`conceal_needed`](Self::conceal_needed)).
    pub fn on_conceal(&mut self, frames: u64) {
        if frames == 0 {
            return;
        }
        if !self.in_conceal && self.state != PlayoutState::Buffering {
            self.in_conceal = true;
            self.concealments += 1;
            let t = self.last_tick;
            self.pending_insert = self.raise_target(t, true);
            self.episode_raise = self.pending_insert;
        }
        let ins = self.pending_insert.min(frames);
        self.pending_insert -= ins;
        self.fifo += frames;
        self.next_pos = self.next_pos.saturating_add((frames - ins) as i64);
        self.concealed_frames += frames;
        self.episode_conceal += frames;
        if self.episode_conceal as f64 >= MAX_CONCEAL_SEC * self.rate {
            // The sender paused (or the link is down): stop concealing, buffer again when
            // packets return. A gap this long says nothing about jitter: the target goes
            // back to where it was before the episode.
            self.state = PlayoutState::Buffering;
            self.target = (self.target - self.episode_raise as f64).max(self.base_target);
            self.setpoint = self.target;
            self.episode_raise = 0;
        }
    }

    /// The latency in µs at `now_usec` (see the module documentation).
    pub fn latency_usec(&self, now_usec: u64) -> u64 {
        let t = self.secs_ro(now_usec);
        (self.latency_frames_at(t).max(0.0) / self.rate * 1e6) as u64
    }

    /// The current ratio, output frames per input frame.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// The latency setpoint the loop holds now (follows the target at [`GLIDE`]), frames.
    pub fn setpoint_frames(&self) -> f64 {
        self.setpoint
    }

    /// The current target, frames.
    pub fn target_frames(&self) -> f64 {
        self.target
    }

    /// The state.
    pub fn state(&self) -> PlayoutState {
        self.state
    }

    /// Frames in the FIFO (not yet resampled).
    pub fn fifo_frames(&self) -> u64 {
        self.fifo
    }

    /// Stream position of the next frame the resampler will read, as the latency sees it
    /// (received end position minus the FIFO), frames.
    pub fn read_position(&self) -> f64 {
        self.next_pos as f64 - self.fifo as f64
    }

    /// Resampler delay, input frames.
    pub fn delay_frames(&self) -> f64 {
        self.delay
    }

    /// Output frames produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The estimated device period, frames.
    pub fn device_period(&self) -> f64 {
        self.period
    }

    /// The stream DLL.
    pub fn stream_dll(&self) -> &Dll {
        &self.stream
    }

    /// The device DLL.
    pub fn device_dll(&self) -> &Dll {
        &self.device
    }

    /// Statistics; `latency_usec` as of the last device report.
    pub fn stats(&self) -> PlayoutStats {
        let t = self.last_tick;
        let lat = if self.state == PlayoutState::Buffering {
            (self.fifo + self.produced.saturating_sub(self.consumed)) as f64
        } else {
            self.latency_frames_at(t).max(0.0)
        };
        PlayoutStats {
            latency_usec: (lat / self.rate * 1e6) as u64,
            target_usec: (self.target / self.rate * 1e6) as u64,
            drift_ppm: (self.ratio - 1.0) * 1e6,
            ratio: self.ratio,
            underruns: self.underruns,
            concealments: self.concealments,
            concealed_frames: self.concealed_frames,
            overruns: self.overruns,
            dropped_frames: self.dropped,
            inserted_frames: self.inserted,
            late_frames: self.late,
            discontinuities: self.discontinuities,
            state: self.state,
        }
    }
}

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
/// [module documentation](self).
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
        // The resampler reads 5 ms at a time.
        let chunk = (cfg.rate as usize / 200).max(8);
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
        })
    }

    /// A packet arrived at `now_usec` (µs, monotonic): `rtp_ts` is the position of its first
    /// frame in the stream's sample clock (frames at `rate`; for Opus at other rates than
    /// 48 kHz convert the 48 kHz RTP ticks first), wrapping at 2³²; `pcm` its decoded
    /// interleaved samples (a trailing partial frame is ignored). Late audio that PLC already
    /// stood in for is dropped; gaps and jumps of the timestamp are handled.
    pub fn on_packet(&mut self, now_usec: u64, rtp_ts: u32, pcm: &[f32]) {
        let pos = match self.last_ts {
            None => i64::from(rtp_ts) + (1i64 << 40),
            Some(last) => self.ext + i64::from(rtp_ts.wrapping_sub(last) as i32),
        };
        self.last_ts = Some(rtp_ts);
        self.ext = pos;
        let frames = pcm.len() / self.channels;
        let skip = self.ctl.on_packet(now_usec, pos, frames as u64) as usize;
        self.fifo
            .extend(&pcm[skip * self.channels..frames * self.channels]);
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

    /// Concealed audio (interleaved) to play as if it had arrived.
    pub fn on_conceal(&mut self, pcm: &[f32]) {
        let frames = pcm.len() / self.channels;
        self.fifo.extend(&pcm[..frames * self.channels]);
        self.ctl.on_conceal(frames as u64);
    }

    /// Appends to `out` the audio ready for the ring (interleaved, resampled or slewed). The
    /// ring fill is then `produced − consumed`; the caller must push all of it.
    pub fn produce(&mut self, out: &mut Vec<f32>) {
        let plan = self.ctl.plan();
        let ch = self.channels;
        let n_drop = (plan.drop_frames as usize).min(self.fifo.len() / ch);
        self.fifo.drain(..n_drop * ch);
        for _ in 0..plan.insert_frames as usize * ch {
            self.fifo.push_front(0.0);
        }
        let mut left = plan.feed_frames as usize;
        if self.ctl.external_resampler() {
            // Whoever plays the ring resamples: pass the audio through.
            let n = left.min(self.fifo.len() / ch);
            out.extend(self.fifo.drain(..n * ch));
            self.ctl.on_produced(n as u64, n as u64);
            return;
        }
        if self.resampler.set_resample_ratio(plan.ratio, true).is_err() {
            let _ = self.resampler.set_resample_ratio(1.0, true);
        }
        while left >= self.chunk && self.fifo.len() >= self.chunk * ch {
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

    /// Forgets the stream (new stream, reconnect, pause): empties the FIFO and the resampler
    /// and goes back to buffering. The caller must also empty or recreate its ring (the
    /// device counters then restart from zero, which the engine notices).
    pub fn reset(&mut self) {
        self.ctl.reset();
        self.fifo.clear();
        self.resampler.reset();
        self.last_ts = None;
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
            self.ctl.delay = self.resampler.output_delay() as f64;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact clocks, 20 ms packets, device popping every 10 ms, worker waking on both.
    struct Rig {
        ctl: Controller,
        t: f64,
        fs: f64,
        fd: f64,
        next_pkt: f64,
        next_pop: f64,
        k: i64,
        consumed: u64,
        missing: u64,
        phase: f64,
        paused: bool,
        gap: i64,
        /// External resampler mode: `Some(quantize)`; the device takes stream frames at
        /// `1/ratio` per device frame (with `quantize`, as PipeWire 0.3.65's resampler does:
        /// an input rate of `floor(48000 / ratio)` Hz).
        ext: Option<bool>,
        ext_phase: f64,
        /// Frames the rig put into its ring (stream frames in external mode).
        pushed: u64,
    }

    impl Rig {
        fn new(target_ms: u64, max_ms: u64, skew_ppm: f64) -> Rig {
            let cfg = PlayoutConfig {
                rate: 48_000,
                channels: 2,
                target_usec: target_ms * 1000,
                max_usec: max_ms * 1000,
            };
            Rig {
                ctl: Controller::new(cfg, 240, 32.0).unwrap(),
                t: 0.0,
                fs: 48_000.0,
                fd: 48_000.0 * (1.0 + skew_ppm * 1e-6),
                next_pkt: 0.02,
                next_pop: 0.2,
                k: 0,
                consumed: 0,
                missing: 0,
                phase: 0.0,
                paused: false,
                gap: 0,
                ext: None,
                ext_phase: 0.0,
                pushed: 0,
            }
        }

        fn external(mut self, quantize: bool) -> Rig {
            self.ctl.set_external_resampler(true);
            self.ext = Some(quantize);
            self
        }

        fn us(t: f64) -> u64 {
            (t * 1e6) as u64 + 1_000_000
        }

        fn run(&mut self, secs: f64) {
            let end = self.t + secs;
            while self.t < end {
                if self.next_pkt <= self.next_pop {
                    self.t = self.next_pkt;
                    if !self.paused {
                        let pos = self.k * 960 + self.gap;
                        self.ctl.on_packet(Self::us(self.t), pos, 960);
                    }
                    self.k += 1;
                    self.next_pkt = (self.k + 1) as f64 * 960.0 / self.fs;
                } else {
                    self.t = self.next_pop;
                    let ring = self.pushed - self.consumed;
                    let want = match self.ext {
                        None => 480,
                        Some(q) => {
                            let r = self.ctl.ratio();
                            let inc = if q {
                                (48_000.0 / r).floor() / 48_000.0
                            } else {
                                1.0 / r
                            };
                            self.ext_phase += 480.0 * inc;
                            let n = self.ext_phase.floor();
                            self.ext_phase -= n;
                            n as u64
                        }
                    };
                    let take = ring.min(want);
                    self.consumed += take;
                    if self.ctl.state() != PlayoutState::Buffering {
                        self.missing += want - take;
                    } else {
                        self.consumed += 0;
                    }
                    self.ctl
                        .on_device(Self::us(self.t), self.consumed, self.missing);
                    self.next_pop += 480.0 / self.fd;
                }
                let now = Self::us(self.t);
                while let Some(n) = self.ctl.conceal_needed(now) {
                    self.ctl.on_conceal(n as u64);
                }
                let plan = self.ctl.plan();
                let mut left = plan.feed_frames;
                while left >= 240 {
                    if self.ext.is_some() {
                        self.pushed += 240;
                        self.ctl.on_produced(240, 240);
                    } else {
                        self.phase += 240.0 * plan.ratio;
                        let out = self.phase.floor();
                        self.phase -= out;
                        self.pushed += out as u64;
                        self.ctl.on_produced(240, out as u64);
                    }
                    left -= 240;
                }
            }
        }

        fn lat_err_ms(&self) -> f64 {
            self.ctl.latency_usec(Self::us(self.t)) as f64 / 1000.0
                - self.ctl.setpoint_frames() / 48.0
        }
    }

    #[test]
    fn start_headroom_stays_under_the_maximum() {
        // max_latency = target: the first start cannot hold its headroom above the target.
        let mut r = Rig::new(60, 60, 0.0);
        r.run(5.0);
        let st = r.ctl.stats();
        assert_eq!(st.state, PlayoutState::Locked, "{st:?}");
        assert_eq!(st.overruns, 0, "{st:?}");
        assert!(r.ctl.setpoint_frames() <= 60.0 * 48.0, "{st:?}");
        // With room above the target it holds the headroom while starting.
        let mut r = Rig::new(60, 500, 0.0);
        r.run(0.5);
        let sp = r.ctl.setpoint_frames() / 48.0;
        assert!((sp - 80.0).abs() < 0.5, "setpoint {sp} ms while starting");
    }

    #[test]
    fn pi_converges() {
        for skew in [-1500.0, 0.0, 800.0] {
            let mut r = Rig::new(60, 500, skew);
            // The device starts pulling 180 ms after the stream: that excess is cut at the
            // start, not resampled away (which would hold the 1 % limit for 15 s); the loop
            // holds its ratio for the first second, then acquires the skew (the DLLs learn
            // the rates from 3 s on) while the first start's headroom glides away at
            // START_GLIDE (10 ms left after the device's first pull: until ~11 s); within
            // 200 ppm from 14 s on.
            for i in 0..30 {
                r.run(1.0);
                let d = r.ctl.stats().drift_ppm;
                assert!(
                    i < 13 || (d - skew).abs() < 200.0,
                    "skew {skew}: drift {d:.1} ppm at {} s",
                    i + 1
                );
            }
            let drift = r.ctl.stats().drift_ppm;
            println!(
                "PI, skew {skew} ppm: after 30 s drift {drift:.2} ppm, latency error {:.3} ms",
                r.lat_err_ms()
            );
            assert!((drift - skew).abs() < 20.0, "drift {drift} for skew {skew}");
            assert!(r.lat_err_ms().abs() < 0.5);
            assert_eq!(r.ctl.stats().underruns, 0);
        }
    }

    #[test]
    fn external_resampler_converges() {
        // The ring's reader resamples (PipeWire's adapter through rate matching): the
        // controller sees stream frames going out at 1/ratio per device frame and must neither
        // be fooled in its device DLL nor in its latency. With PipeWire 0.3.65's 1 Hz steps
        // of the input rate (20.8 ppm at 48 kHz) the loop dithers between two steps.
        for quantize in [false, true] {
            for skew in [-1500.0, 0.0, 110.0, 800.0] {
                let mut r = Rig::new(60, 500, skew).external(quantize);
                let mut worst: f64 = 0.0;
                for i in 0..60 {
                    r.run(1.0);
                    if i >= 30 {
                        worst = worst.max(r.lat_err_ms().abs());
                    }
                }
                let drift = r.ctl.stats().drift_ppm;
                println!(
                    "external (quantized {quantize}), skew {skew} ppm: after 60 s drift \
                     {drift:.2} ppm, latency error {:.3} ms (worst {worst:.3} ms over 30–60 s), \
                     underruns {}",
                    r.lat_err_ms(),
                    r.ctl.stats().underruns
                );
                let tol = if quantize { 25.0 } else { 20.0 };
                assert!((drift - skew).abs() < tol, "drift {drift} for skew {skew}");
                assert!(worst < 1.0, "latency error {worst} ms");
                assert_eq!(r.ctl.stats().underruns, 0);
            }
        }
    }

    #[test]
    fn pi_does_not_wind_up_when_saturated() {
        // 100 ms too little audio for 60 s with ωn = 0.5: the output sits at +1 %.
        let mut pi = Pi::default();
        let dt = 0.01;
        for _ in 0..6000 {
            let u = pi.update(-0.1, 0.0, dt, 0.5);
            assert!(u <= MAX_CORRECTION);
        }
        let sat = pi.update(-0.1, 0.0, dt, 0.5);
        let integ = pi.integ;
        // The error is gone: the output must leave saturation within a few time constants
        // of the filter, not after unwinding a minute's worth of integral.
        let mut t_out = None;
        for i in 0..2000 {
            let u = pi.update(0.0, 0.0, dt, 0.5);
            if t_out.is_none() && u < MAX_CORRECTION * 0.5 {
                t_out = Some(i as f64 * dt);
            }
        }
        let t_out = t_out.expect("never left saturation");
        println!(
            "PI saturated at {sat:.4} with integrator {integ:.5}; left saturation {t_out:.2} s \
             after the error went away"
        );
        assert_eq!(sat, MAX_CORRECTION);
        assert!(integ.abs() <= MAX_CORRECTION);
        assert!(t_out < 2.0);
        // Without the anti-windup the integrator would hold ωn²·0.1·60 = 1.5 (150 %).
    }

    #[test]
    fn a_500_ms_step_slews_instead_of_resampling() {
        let mut r = Rig::new(60, 2000, 0.0);
        r.run(30.0);
        let start = r.ctl.stats();
        // The device stops for 500 ms (a stuck IO thread, a suspended sink) and goes on:
        // the ring holds 500 ms too much.
        r.next_pop += 0.5;
        r.run(0.6);
        let st = r.ctl.stats();
        println!(
            "500 ms step: {} slews, {} frames dropped, drift {:.1} ppm, latency error {:.3} ms",
            st.overruns,
            st.dropped_frames,
            st.drift_ppm,
            r.lat_err_ms()
        );
        r.run(2.0);
        let st = r.ctl.stats();
        println!(
            "2 s later: {} slews, {} frames dropped, drift {:.1} ppm, latency error {:.3} ms",
            st.overruns,
            st.dropped_frames,
            st.drift_ppm,
            r.lat_err_ms()
        );
        assert_eq!(st.overruns - start.overruns, 1);
        let dropped = st.dropped_frames - start.dropped_frames;
        assert!(
            (dropped as f64 - 24_000.0).abs() < 1_000.0,
            "{dropped} dropped"
        );
        assert!(
            st.drift_ppm.abs() < 200.0,
            "resampled instead: {}",
            st.drift_ppm
        );
        r.run(20.0);
        assert!(r.lat_err_ms().abs() < 1.0, "{}", r.lat_err_ms());
        assert_eq!(r.ctl.stats().underruns, 0);
    }

    #[test]
    fn underruns_raise_the_target_bounded_and_it_comes_back() {
        let mut r = Rig::new(60, 100, 0.0);
        r.run(30.0);
        let period_ms = r.ctl.device_period() / 48.0;
        for i in 1..=6 {
            // A 150 ms stall of the stream: concealed, target + one period.
            r.paused = true;
            r.run(0.15);
            r.paused = false;
            r.run(5.0);
            let st = r.ctl.stats();
            println!(
                "stall {i}: concealments {}, target {} µs, underruns {}",
                st.concealments, st.target_usec, st.underruns
            );
            assert_eq!(st.concealments, i);
            let want = (60.0 + period_ms * i as f64).min(100.0);
            assert!((st.target_usec as f64 / 1000.0 - want).abs() < 0.5);
        }
        assert_eq!(r.ctl.stats().underruns, 0);
        // 60 s without underrun: one period down, then another after 60 s more.
        r.run(61.0);
        let t1 = r.ctl.stats().target_usec;
        r.run(60.0);
        let t2 = r.ctl.stats().target_usec;
        println!("after 61 s stable: target {t1} µs; 60 s later {t2} µs");
        assert!((t1 as f64 / 1000.0 - (100.0 - period_ms)).abs() < 0.5);
        assert!((t2 as f64 / 1000.0 - (100.0 - 2.0 * period_ms)).abs() < 0.5);
        // A device underrun counts and raises the target too.
        let before = r.ctl.stats();
        r.missing += 480;
        r.run(0.02);
        let after = r.ctl.stats();
        assert_eq!(after.underruns, before.underruns + 1);
        assert!(after.target_usec > before.target_usec);
    }
}
