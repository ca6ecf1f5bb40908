//! [`Controller`]: the control part of the engine, driven by times and frame counts only.

use super::clock::Clock;
use super::pi::LoopFilter;
use super::skew::SkewEstimator;
use super::target::TargetAdapter;
use super::*;

/// Where playout is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No audio: before the first packet, after a reset, after a pause.
    Idle,
    /// Audio is arriving; playout starts soon.
    Buffering,
    /// Playing since `since` (seconds).
    Playing { since: f64 },
}

/// The control part; see the [module documentation](super).
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: PlayoutConfig,
    rate: f64,
    chunk: u64,
    quantum: u64,
    delay: f64,
    /// Whether the resampler has produced since it was (re)made: until then it holds none
    /// of the audio its delay counts.
    primed: bool,
    t_origin: Option<u64>,
    now_t: f64,
    phase: Phase,
    /// Whether the device has taken any audio since playout started.
    reached: bool,
    /// An underrun left the latency short of its target, not yet made up: until it is, the
    /// latency may be raised by repeating a period of the audio.
    short_after_underrun: bool,
    /// When a period was last cut, s; and whether the latest plan asked for a cut.
    cut_at: f64,
    cutting: bool,
    // The stream: arrivals, and the position of the next frame to arrive.
    stream: Clock,
    next_pos: Option<i64>,
    fifo: u64,
    /// The latest packet's length, frames.
    packet: u64,
    /// The block the sender posts its audio in, frames (0: not known); see
    /// [`Controller::set_sender_block`].
    sender_block: u64,

    // The device: its pulls, and the frames it took or found missing.
    device: Clock,
    /// The device's pulls on its line so far (its first is left out once the second comes).
    device_pulls: u64,
    produced: u64,
    consumed: u64,
    missing: u64,
    // The loop.
    target: TargetAdapter,
    filter: LoopFilter,
    skew: SkewEstimator,
    ratio: f64,
    last_tick: Option<f64>,
    // Concealment.
    in_conceal: bool,
    /// When the engine last concealed, s.
    last_conceal_t: f64,
    /// The latest audio handed over did not arrive (rebuilt, FEC-decoded or concealed).
    after_lost: bool,
    episode_conceal: u64,
    // Counters.
    underruns: u64,
    concealments: u64,
    concealed_frames: u64,
    overruns: u64,
    dropped: u64,
    inserted: u64,
    trimmed: u64,
    late: u64,
    discontinuities: u64,
    // External resampler (see `set_external_resampler`).
    external: bool,
    ext_raw: (u64, u64),
    ext_dev: (f64, f64),
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
        let chunk = chunk_frames.max(1) as u64;
        let delay = delay_frames.max(0.0);
        Ok(Controller {
            cfg,
            rate,
            chunk,
            quantum: u64::from(cfg.rate / 400).max(1),
            delay,
            primed: false,
            t_origin: None,
            now_t: 0.0,
            phase: Phase::Idle,
            reached: false,
            short_after_underrun: false,
            cut_at: f64::NEG_INFINITY,
            cutting: false,
            stream: Clock::new(rate),
            next_pos: None,
            fifo: 0,
            packet: 0,
            sender_block: 0,
            device: Clock::with_rate_doubt(rate, Clock::DEVICE_RATE_DOUBT),
            device_pulls: 0,
            produced: 0,
            consumed: 0,
            missing: 0,
            target: TargetAdapter::new(cfg.target, cfg.rate, cfg.min_usec, cfg.max_usec, delay),
            filter: LoopFilter::default(),
            skew: SkewEstimator::default(),
            ratio: 1.0,
            last_tick: None,
            in_conceal: false,
            last_conceal_t: f64::NEG_INFINITY,
            after_lost: false,
            episode_conceal: 0,
            underruns: 0,
            concealments: 0,
            concealed_frames: 0,
            overruns: 0,
            dropped: 0,
            inserted: 0,
            trimmed: 0,
            late: 0,
            discontinuities: 0,
            external: false,
            ext_raw: (0, 0),
            ext_dev: (0.0, 0.0),
            ext_produced: 0.0,
        })
    }

    /// External resampler mode: the audio is not resampled by the caller (it passes the
    /// FIFO through at ratio 1, with no resampler delay) and whatever plays the ring applies
    /// [`ratio`](Self::ratio) itself (output frames per input frame; e.g. PipeWire's adapter
    /// through rate matching). The ring then holds stream frames and the device reports
    /// stream frames; the controller converts both to device frames with the ratio in force.
    /// Survives [`reset`](Self::reset).
    pub fn set_external_resampler(&mut self, on: bool) {
        self.external = on;
        if on {
            self.delay = 0.0;
        }
    }

    /// The sender posts its audio in blocks of `frames` (its device's period, e.g. a
    /// PipeWire graph's quantum; 0: not known). A packet leaves with the block that completes
    /// it, so packets that do not divide the block leave late by a ramp that repeats (1024-frame
    /// quanta carrying 960-frame packets: each packet 64 frames later than the one before, up
    /// to 960). Each start counts that ramp as lateness seen from its first packet on, so the
    /// target holds it from the start instead of learning it from underruns over the first
    /// ramp. Survives [`reset`](Self::reset).
    pub fn set_sender_block(&mut self, frames: u64) {
        self.sender_block = frames;
    }

    /// Whether the external resampler mode is on.
    pub fn external_resampler(&self) -> bool {
        self.external
    }

    /// The configuration.
    pub fn config(&self) -> PlayoutConfig {
        self.cfg
    }

    /// Forgets the stream and the device (new stream, reconnect): back to idle. The counters
    /// and what the target learnt about the link are kept.
    pub fn reset(&mut self) {
        let Ok(mut fresh) = Controller::new(self.cfg, self.chunk as usize, self.delay) else {
            return;
        };
        fresh.target = self.target.clone();
        fresh.t_origin = self.t_origin;
        fresh.now_t = self.now_t;
        fresh.underruns = self.underruns;
        fresh.concealments = self.concealments;
        fresh.concealed_frames = self.concealed_frames;
        fresh.overruns = self.overruns;
        fresh.dropped = self.dropped;
        fresh.inserted = self.inserted;
        fresh.trimmed = self.trimmed;
        fresh.late = self.late;
        fresh.discontinuities = self.discontinuities;
        fresh.external = self.external;
        fresh.sender_block = self.sender_block;
        *self = fresh;
    }

    fn secs(&mut self, now_usec: u64) -> f64 {
        let origin = *self.t_origin.get_or_insert(now_usec);
        let t = (now_usec as f64 - origin as f64) * 1e-6;
        self.now_t = self.now_t.max(t);
        t
    }

    fn secs_ro(&self, now_usec: u64) -> f64 {
        match self.t_origin {
            Some(o) => (now_usec as f64 - o as f64) * 1e-6,
            None => 0.0,
        }
    }

    /// A packet of `frames` frames whose first frame has stream position `pos` (an extended,
    /// unwrapped sample position) arrived at `now_usec`. Returns how many leading frames to
    /// throw away; the rest goes to the FIFO. Audio that arrives after concealment stood in
    /// for it is kept (the latency grows by the overlap, as a late packet asks) unless that
    /// would pass the maximum latency.
    pub fn on_packet(&mut self, now_usec: u64, pos: i64, frames: u64) -> u64 {
        self.on_audio(now_usec, Some(now_usec), pos, frames)
    }

    /// As [`on_packet`](Self::on_packet), for audio handed over at `now_usec` that arrived
    /// at `arrived_usec` (a packet the jitter buffer held behind a gap), or that did not
    /// arrive at all (`None`: rebuilt from parity, decoded from FEC, concealed). Only an
    /// arrival is an observation of the stream's clock (its line, the skew, the target's
    /// waits): the time audio spent waiting in our own jitter buffer is not the link's.
    /// Audio that did not arrive adds only what the stream does not hold yet: its overlap
    /// with what was concealed meanwhile is skipped, so a lost packet never grows the
    /// latency.
    pub fn on_audio(
        &mut self,
        now_usec: u64,
        arrived_usec: Option<u64>,
        pos: i64,
        frames: u64,
    ) -> u64 {
        if frames == 0 {
            // A lost packet whose time was concealed already: the packet after it comes
            // after a loss (see `in_time` below).
            self.after_lost |= arrived_usec.is_none() && self.phase != Phase::Idle;
            return 0;
        }
        let arrived = arrived_usec.map(|a| self.secs(a.min(now_usec)));
        let t = self.secs(now_usec);
        let end = pos.saturating_add(frames as i64);
        if self.phase == Phase::Idle {
            // A (re)start: a new arrival line from this packet on.
            self.phase = Phase::Buffering;
            self.stream.clear();
            self.skew.restart_stream();
            self.next_pos = None;
            let ramp = block_ramp(self.sender_block, frames);
            if ramp > 0 {
                self.target.on_packet(t, ramp as f64, frames as f64);
            }
        }
        let next = *self.next_pos.get_or_insert(pos);
        let d = pos.saturating_sub(next);
        let mut skip = 0u64;
        if d > self.target.max_frames() as i64 || d < -(self.rate as i64) {
            // A jump of the stream position: join the audio, keep the latency.
            self.discontinuities += 1;
            self.stream.shift(d as f64);
            self.skew.restart_stream();
            self.next_pos = Some(pos);
        } else if d < 0 {
            let overlap = (-d as u64).min(frames);
            // A packet right after a lost one that came before its first frame's turn at
            // the target: the concealment that covered its start was the lost packet's,
            // running on into the device's next pull (the jitter buffer may also have held
            // it behind the gap). (Not after a late packet: there the overlap is the
            // latency the link needs.)
            let in_time = self.after_lost
                && arrived.is_some_and(|a| {
                    let target = self.target.target(a);
                    self.stream
                        .position_at(a)
                        .is_some_and(|p| p - (pos as f64) < target)
                });
            if arrived_usec.is_none() || in_time {
                // Rebuilt audio (FEC, parity, concealment of a lost packet), or a packet in
                // time, for a time the engine has already concealed: only the rest is new.
                // (A late packet is played whole: it shows the link needs the latency.)
                skip = overlap;
            } else if self.latency_frames_at(t) + frames as f64 > self.target.max_frames() {
                skip = overlap;
                self.late += skip;
            }
        }
        self.packet = frames;
        self.after_lost = arrived_usec.is_none();
        let appended = frames - skip;
        self.fifo += appended;
        let next = self.next_pos.unwrap_or(pos);
        self.next_pos = Some(next.max(end));
        // The packet's first frame waits for its last: the buffer must cover the packet's
        // length on top of its lateness. Observations keep their order in time.
        if let Some(a) = arrived {
            let a = self.stream.last_seen().map_or(a, |l| a.max(l));
            // The skew first: a rate it learns now measures this packet's lateness too.
            self.skew.on_stream(a, end as f64, self.rate);
            self.learn_rates();
            let late = self.stream.observe(a, end as f64);
            self.target.on_packet(a, late * self.rate, frames as f64);
        }
        if appended > 0 {
            // Fresh audio: a concealment episode (if any) is over.
            self.in_conceal = false;
            self.episode_conceal = 0;
        }
        skip
    }

    /// A packet of `frames` frames whose first frame has stream position `pos` arrived at
    /// `now_usec` after its time had been played (concealed; a repair that came after the
    /// gap's turn): its audio is not used, but it shows how late the link delivers, so it
    /// sizes the target as any arrival does (a packet later than any before raises it at
    /// once). It is not an observation of the stream's clock: the clock's line and the skew
    /// take arrivals in time only.
    pub fn on_too_late(&mut self, now_usec: u64, pos: i64, frames: u64) {
        if self.phase == Phase::Idle {
            return;
        }
        let t = self.secs(now_usec);
        if let Some(late) = self.stream.lateness(t, (pos + frames as i64) as f64) {
            self.target.on_packet(t, late * self.rate, frames as f64);
        }
    }

    /// Frames from stream position `pos` on that are already in the stream (received or
    /// concealed): what audio for `pos` would overlap.
    pub fn covered_from(&self, pos: i64) -> u64 {
        self.next_pos
            .map_or(0, |n| n.saturating_sub(pos).max(0) as u64)
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
        if consumed_total < self.consumed || missing_total < self.missing {
            // The ring was recreated under us: start the device side again.
            self.device.clear();
            self.skew.restart_device();
            self.device_pulls = 0;
            self.produced = self.produced.saturating_sub(self.consumed);
            self.consumed = 0;
            self.missing = 0;
        }
        if self
            .device
            .last_seen()
            .is_some_and(|last| t - last > DEVICE_GAP_SEC)
        {
            // The device stopped for a while (suspended, moved): a new line from here.
            self.device.clear();
            self.skew.restart_device();
            self.device_pulls = 0;
        }
        // A device's first pull shows when it started, not its pace: a graph that links a
        // new stream plays that cycle at the quantum it had (PipeWire: 43 ms, then 5 ms
        // pulls), and jitter only ever delays the pulls after it, so the first would hold
        // the line ahead of the device for the window's length. The line (and the skew's)
        // runs from the second pull.
        if self.device_pulls == 1 {
            self.device.clear();
            self.skew.restart_device();
        }
        self.device_pulls += 1;
        let new_missing = missing_total - self.missing;
        let took = consumed_total > self.consumed;
        self.consumed = consumed_total;
        self.missing = missing_total;
        let device_pos = consumed_total.saturating_add(missing_total) as f64;
        self.device.observe(t, device_pos);
        self.skew.on_device(t, device_pos, self.rate);
        self.learn_rates();
        // An underrun is the device finding the ring short once the audio has reached it. A
        // pull that finds it empty before then (while the worker makes the start's audio:
        // 800 ms of a source posting 500 ms blocks takes it a few ms) only plays the audio
        // that much later: nothing is lost, and the latency counts it.
        let playing = matches!(self.phase, Phase::Playing { .. });
        if playing && new_missing > 0 && (self.reached || took) {
            self.underruns += 1;
            self.short_after_underrun = true;
            self.target.on_underrun(t, new_missing as f64);
        }
        self.reached |= playing && took;
        self.control(t);
    }

    /// The clocks' lines run at the rates the skew estimator learnt.
    fn learn_rates(&mut self) {
        self.stream.set_rate(self.skew.stream_rate());
        self.device.set_rate(self.skew.device_rate());
    }

    /// External resampler: the device's stream-frame totals → device-frame totals (each new
    /// frame counts `ratio` device frames).
    fn ext_device_frames(&mut self, consumed_raw: u64, missing_raw: u64) -> (u64, u64) {
        if consumed_raw < self.ext_raw.0 || missing_raw < self.ext_raw.1 {
            self.ext_produced -= self.ext_dev.0.min(self.ext_produced);
            self.ext_dev = (0.0, 0.0);
            self.ext_raw = (0, 0);
        }
        self.ext_dev.0 += (consumed_raw - self.ext_raw.0) as f64 * self.ratio;
        self.ext_dev.1 += (missing_raw - self.ext_raw.1) as f64 * self.ratio;
        self.ext_raw = (consumed_raw, missing_raw);
        (self.ext_dev.0.round() as u64, self.ext_dev.1.round() as u64)
    }

    /// Whether the device has pulled within [`DEVICE_GAP_SEC`] of `t` (its line is current).
    fn device_pulling(&self, t: f64) -> bool {
        self.device
            .last_seen()
            .is_some_and(|last| t - last <= DEVICE_GAP_SEC)
    }

    /// Frames the device has taken out of the ring by time `t`, as its line says (its pulls
    /// come in periods; the line is where its earliest pulls put it).
    fn popped_at(&self, t: f64) -> f64 {
        match self.device.position_at(t) {
            Some(c) if self.device_pulling(t) => {
                (c - self.missing as f64).max(self.consumed as f64)
            }
            _ => self.consumed as f64,
        }
    }

    /// The latency in stream frames at time `t` (seconds since the origin): from the earliest
    /// arrival of a frame to the device's pull of it.
    fn latency_frames_at(&self, t: f64) -> f64 {
        let Some((held, ring)) = self.parts_at(t) else {
            return 0.0;
        };
        // The device's line runs on between its pulls; past what the ring held it pulls
        // nothing of ours (it finds the ring short): audio put in now waits for no one.
        held + self.delay + ring.max(0.0)
    }

    /// The parts of `L` at time `t` (stream frames): from the stream's line to the next frame
    /// the resampler reads (`S − V`), and the ring as the device's line leaves it (below zero
    /// between pulls when it is empty); `None` before any audio.
    fn parts_at(&self, t: f64) -> Option<(f64, f64)> {
        let next = self.next_pos?;
        let v = next as f64 - self.fifo as f64;
        let s = self.stream.position_at(t).unwrap_or(next as f64);
        let ring = (self.produced as f64 - self.popped_at(t)) / self.ratio;
        Some((s - v, ring))
    }

    /// For a start at `t`: the latency of the audio held (`L` with the ring as it is, at
    /// least empty), and the ring's part of `L` once new audio is in it, which is below zero
    /// between the device's pulls: its line has run on since the last one, and the next one
    /// takes that part of its period from the new audio. (Counting the ring as empty there,
    /// playout started up to a device period short of the target.) A resampler that has not
    /// produced since it was made holds none of its delay yet.
    fn start_latency_frames_at(&self, t: f64) -> (f64, f64) {
        let Some((held, ring)) = self.parts_at(t) else {
            return (0.0, 0.0);
        };
        let delay = if self.primed { self.delay } else { 0.0 };
        (held + delay + ring.max(0.0), ring.min(0.0))
    }

    /// One step of the loop: the ratio from the skew and the latency error.
    fn control(&mut self, t: f64) {
        let dt = self.last_tick.map_or(0.0, |l| (t - l).clamp(0.0, 1.0));
        self.last_tick = Some(t);
        let Phase::Playing { since } = self.phase else {
            return;
        };
        let lat = self.latency_frames_at(t) / self.rate;
        let err = lat - self.target.target(t) / self.rate;
        // After a concealment (once the start is over) the pitch stays within ±200 ppm of the
        // skew: the latency the late audio added is the target's, not an error to chase.
        let calm = t - since >= START_SEC && t - self.last_conceal_t < AFTER_CONCEAL_SEC;
        let limit = if calm { CORRECTION } else { START_CORRECTION };
        let correction = self.filter.update(err, dt, LOOP_GAIN.at(t - since), limit);
        self.ratio = 1.0 + (self.skew.skew() + correction).clamp(-MAX_CORRECTION, MAX_CORRECTION);
    }

    /// What to do with the FIFO now; the caller executes it and reports back with
    /// [`on_trimmed`](Self::on_trimmed) and [`on_produced`](Self::on_produced).
    pub fn plan(&mut self) -> Plan {
        let mut plan = Plan {
            ratio: self.ratio,
            ..Plan::default()
        };
        let t = self.now_t;
        let target = self.target.target(t);
        let lat = self.latency_frames_at(t);
        match self.phase {
            Phase::Idle => return plan,
            Phase::Buffering => {
                if !self.device_pulling(t) || self.fifo == 0 {
                    // Waiting for the device to pull (PulseAudio's idle null sink renders 2 s
                    // ahead, so it first pulls a new stream up to 2 s later; a device last
                    // seen before a pause is not pulling: a start on its old line came one
                    // pull short): the audio that
                    // waits beyond the target is the oldest and goes, as audio played while the
                    // link is down does; playout starts at the target when the device comes.
                    let over = ((lat - target).max(0.0) as u64).min(self.fifo);
                    if over > 0 {
                        self.fifo -= over;
                        self.dropped += over;
                        self.overruns += 1;
                        plan.drop_frames = over;
                    }
                    return plan;
                }
                // Playout starts with the first frame received once waiting has built the
                // latency up to the target: audio that comes meanwhile (a block delivered at
                // once) counts toward it and none of it is cut. The last wake-up's worth of
                // waiting is silence ahead of the audio, so the start does not hang on when
                // the worker wakes. (Committing silence for the whole target at the first
                // packet cut the block that came next: it passed the maximum.) So is the part
                // of the device's period its next pull takes from the new audio.
                let (held, due) = self.start_latency_frames_at(t);
                if target - held > usec_to_frames(WAKE_USEC, self.rate) {
                    return plan;
                }
                let short = (target - held - due).max(0.0).round() as u64;
                self.on_produced(0, short);
                self.inserted += short;
                plan.insert_frames = short;
                self.phase = Phase::Playing { since: t };
                self.reached = false;
                self.filter.filtered = 0.0;
            }
            Phase::Playing { .. } => {
                if lat > self.target.max_frames() {
                    // Beyond the maximum: the oldest audio goes, down to the target.
                    let n = ((lat - target).round().max(0.0) as u64).min(self.fifo);
                    if n > 0 {
                        self.fifo -= n;
                        self.dropped += n;
                        self.overruns += 1;
                        plan.drop_frames = n;
                    }
                } else {
                    let err = lat - target;
                    if err > -TRIM_SEC * self.rate {
                        self.short_after_underrun = false;
                    }
                    if err.abs() > TRIM_SEC * self.rate {
                        plan.trim_frames = err.round() as i64;
                        // Periods are cut to bring an excess down (a backlog, a target
                        // that came down), and repeated to raise the latency to give back
                        // what the engine took (after an underrun: the device already ran
                        // short; or soon after a cut), or for a shortfall the loop would
                        // take seconds over; a smaller step of the target without a loss is
                        // met in silence and by the loop (a pitch period repeated inside
                        // speech cost 0.17 PESQ-WB).
                        let undo = t - self.cut_at < UNDO_CUT_SEC;
                        let far = err < -REPEAT_SEC * self.rate;
                        let reshape = err > 0.0 || self.short_after_underrun || undo || far;
                        plan.reshape = reshape && err.abs() > RESHAPE_SEC * self.rate;
                        self.cutting = plan.reshape && err > 0.0;
                    }
                }
            }
        }
        plan.feed_frames = self.fifo / self.chunk * self.chunk;
        plan
    }

    /// The audio part dropped `dropped` silent frames or inserted `inserted` frames of silence
    /// for [`Plan::trim_frames`].
    pub fn on_trimmed(&mut self, dropped: u64, inserted: u64) {
        self.fifo = self.fifo.saturating_sub(dropped) + inserted;
        self.trimmed += dropped + inserted;
        self.dropped += dropped;
        self.inserted += inserted;
        if dropped > 0 && self.cutting {
            self.cut_at = self.now_t;
        }
        if dropped + inserted > 0 {
            // A trim steps the latency: the loop's memory of the error before it is stale
            // (kept, it would go on correcting an error that is gone, past the target).
            let t = self.now_t;
            self.filter.filtered = (self.latency_frames_at(t) - self.target.target(t)) / self.rate;
        }
    }

    /// The resampler read `input_frames` from the FIFO and produced `output_frames`.
    pub fn on_produced(&mut self, input_frames: u64, output_frames: u64) {
        self.fifo = self.fifo.saturating_sub(input_frames);
        self.primed |= input_frames > 0 && output_frames > 0;
        if self.external {
            // Stream frames into the ring: they will play as `ratio` device frames each.
            self.ext_produced += output_frames as f64 * self.ratio;
            self.produced = self.ext_produced.round() as u64;
        } else {
            self.produced = self.produced.saturating_add(output_frames);
        }
    }

    /// The audio ahead of the device's line at `now_usec`, output frames: the ring, and the
    /// whole chunks of the FIFO.
    fn usable_at(&self, t: f64) -> f64 {
        let ring = (self.produced as f64 - self.popped_at(t)).max(0.0);
        ring + (self.fifo / self.chunk * self.chunk) as f64 * self.ratio
    }

    /// Below this much usable audio (frames) the engine conceals.
    fn conceal_guard(&self) -> f64 {
        usec_to_frames(CONCEAL_GUARD_USEC, self.rate) + self.delay
    }

    /// Whether to conceal now, and how many frames (a multiple of 2.5 ms, for Opus PLC): the
    /// device's line is within [`CONCEAL_GUARD_USEC`] (plus the resampler's look-ahead) of the
    /// end of the audio and no packet has come. Feed the concealed PCM with
    /// [`on_conceal`](Self::on_conceal).
    pub fn conceal_needed(&self, now_usec: u64) -> Option<usize> {
        if !matches!(self.phase, Phase::Playing { .. }) || !self.device.started() {
            return None;
        }
        if self.episode_conceal as f64 >= MAX_CONCEAL_SEC * self.rate {
            return None;
        }
        let t = self.secs_ro(now_usec);
        let usable = self.usable_at(t);
        let guard = self.conceal_guard();
        if usable >= guard {
            return None;
        }
        let need = guard - usable + self.chunk as f64;
        let q = self.quantum;
        let n = ((need.ceil() as u64).div_ceil(q) * q).clamp(q, u64::from(self.cfg.rate));
        Some(n as usize)
    }

    /// How long the worker may sleep (µs, at most [`WAKE_USEC`]) before it must call
    /// [`conceal_needed`](Self::conceal_needed) again, if no packet comes.
    pub fn wake_in_usec(&self, now_usec: u64) -> u64 {
        if !matches!(self.phase, Phase::Playing { .. }) || !self.device.started() {
            return WAKE_USEC;
        }
        let t = self.secs_ro(now_usec);
        let spare = (self.usable_at(t) - self.conceal_guard()) / self.rate;
        ((spare.max(0.0) * 1e6) as u64).min(WAKE_USEC)
    }

    /// `frames` concealed frames were appended to the FIFO (after
    /// [`conceal_needed`](Self::conceal_needed)): they stand in for the late audio.
    pub fn on_conceal(&mut self, frames: u64) {
        if frames == 0 {
            return;
        }
        if !self.in_conceal {
            self.in_conceal = true;
            self.concealments += 1;
        }
        self.last_conceal_t = self.now_t;
        self.fifo += frames;
        if let Some(n) = self.next_pos.as_mut() {
            *n = n.saturating_add(frames as i64);
        }
        self.concealed_frames += frames;
        self.episode_conceal += frames;
        if self.episode_conceal as f64 >= MAX_CONCEAL_SEC * self.rate {
            // The sender paused (or the link is down): stop concealing, start afresh when
            // packets return.
            self.phase = Phase::Idle;
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

    /// The target at the latest time the controller was told about, frames.
    pub fn target_frames(&mut self) -> f64 {
        self.target.target(self.now_t)
    }

    /// The state.
    pub fn state(&self) -> PlayoutState {
        match self.phase {
            Phase::Playing { .. } => PlayoutState::Playing,
            _ => PlayoutState::Buffering,
        }
    }

    /// Frames in the FIFO (not yet resampled).
    pub fn fifo_frames(&self) -> u64 {
        self.fifo
    }

    /// Stream position of the next frame the resampler will read (received end position
    /// minus the FIFO), frames.
    pub fn read_position(&self) -> f64 {
        self.next_pos.map_or(0.0, |n| n as f64 - self.fifo as f64)
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

    /// The clocks' skew as the loop has learnt it (device rate / stream rate − 1), ppm.
    pub fn skew_ppm(&self) -> f64 {
        self.skew.skew() * 1e6
    }

    /// The skew estimator's lines, for a trace.
    pub fn skew_lines(&self) -> String {
        self.skew.describe()
    }

    /// Statistics, as of the latest report.
    pub fn stats(&self) -> PlayoutStats {
        let t = self.now_t;
        let lat = match self.phase {
            Phase::Playing { .. } => self.latency_frames_at(t).max(0.0),
            _ => (self.fifo + self.produced.saturating_sub(self.consumed)) as f64,
        };
        let mut target = self.target.clone();
        PlayoutStats {
            latency_usec: (lat / self.rate * 1e6) as u64,
            packet_usec: (self.packet as f64 / self.rate * 1e6) as u64,
            target_usec: (target.target(t) / self.rate * 1e6) as u64,
            drift_ppm: self.skew.skew() * 1e6,
            ratio: self.ratio,
            underruns: self.underruns,
            concealments: self.concealments,
            concealed_frames: self.concealed_frames,
            overruns: self.overruns,
            dropped_frames: self.dropped,
            inserted_frames: self.inserted,
            trimmed_frames: self.trimmed,
            late_frames: self.late,
            discontinuities: self.discontinuities,
            state: self.state(),
        }
    }
}

/// How late (frames) the packets of `packet` frames of a sender posting blocks of `block`
/// frames can leave, at most, against the stream's clock: a packet leaves with the block that
/// completes it, `ceil(k·packet / block)·block − k·packet` after its end, which runs through the
/// multiples of their greatest common divisor below the block (0 when the packet is a multiple
/// of the block, or either is not known).
pub(crate) fn block_ramp(block: u64, packet: u64) -> u64 {
    if block == 0 || packet == 0 {
        return 0;
    }
    let (mut a, mut b) = (block, packet);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    block - a
}
