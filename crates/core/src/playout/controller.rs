//! [`Controller`]: the control part of the engine, driven by times and frame counts only.

use super::*;
use crate::dll::Dll;

/// The control part: DLLs, latency estimate, filter, PI, slews, concealment, target.
/// Driven by times and frame counts only; see the [module documentation](super).
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
            stream: Dll::new(rate, DLL_BW.start),
            device: Dll::new(rate, DLL_BW.start),
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
        let bw = DLL_BW.at(t - self.stream_t_start);
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
        let bw = DLL_BW.at(t - self.device_t_start);
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
        let wn = LOOP_WN.at(t - self.lock_t);
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

    /// The engine sets the resampler's delay again when it takes the resampling back.
    pub(super) fn set_delay_frames(&mut self, delay_frames: f64) {
        self.delay = delay_frames;
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
