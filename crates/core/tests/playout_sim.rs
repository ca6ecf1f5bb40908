//! Simulation of the playout engine's control part ([`Controller`]) against a sender, a link
//! and a device with their own clocks: skews up to ±2000 ppm, device periods of 5–40 ms,
//! jitter traces (LAN, Wi-Fi-like bursts, a WAN with TCP retransmission stalls), a sender that
//! posts 500 ms blocks, and audio with pauses (where the engine may trim).
//!
//! The audio part is a counting model: the resampler gives `chunk · ratio` output frames per
//! chunk (the fraction carried over; its delay's worth of the first audio stays in it, as in
//! rubato's), and a block at the FIFO's head is silent when its stream position falls in one
//! of the scenario's pauses.
//!
//! `PLAYOUT_SIM_HOURS` sets the length of the drift cases (default 1 in release builds, 0.1
//! in debug builds; `PLAYOUT_SIM_HOURS=24` is the day-long soak the README names). `PLAYOUT_SIM_CSV=DIR` writes each scenario's trace (time, latency, target,
//! correction beyond the skew) to `DIR/NAME.csv` for `scripts/playout_plots.py`.

use opus_tunnel_core::playout::{
    Controller, Plan, PlayoutConfig, PlayoutState, Target, CORRECTION, PAUSE_SEC, START_CORRECTION,
    START_SEC,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

const RATE: u32 = 48_000;
const CHUNK: usize = (RATE / 400) as usize;
const DELAY: f64 = 32.0;

/// The one-way delay of the link for a packet sent at `t` (s), before order is kept.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// `base` + uniform 0..`jitter`.
    Uniform { base: f64, jitter: f64 },
    /// Uniform, and for `len` s every `every` s, 0..`burst` more (Wi-Fi contention).
    Bursts {
        base: f64,
        jitter: f64,
        every: f64,
        len: f64,
        burst: f64,
    },
    /// TCP over a lossy path: `base` + 0..`jitter`, a packet lost with probability `loss`
    /// waits one more round trip plus `rto_extra` (and holds back what follows).
    Tcp {
        base: f64,
        jitter: f64,
        loss: f64,
        rto_extra: f64,
    },
    /// Uniform, and every `every` s (from `every` on) the sender stalls for `stall` s: what
    /// it sends in that time leaves together at the stall's end (a daemon blocked, a VM
    /// descheduled).
    Stalls {
        base: f64,
        jitter: f64,
        every: f64,
        stall: f64,
    },
    /// A busy sender: each packet leaves `late` + 0..`jitter` after it is complete, except
    /// one in `1/on_time` that leaves at once (a sending thread that is rarely woken on time:
    /// the clock's line is where the on-time ones put it).
    BusySender {
        base: f64,
        late: f64,
        jitter: f64,
        on_time: f64,
    },
    /// A sender that falls behind steadily and catches up at once: each packet leaves
    /// `ramp` × (the time since the last catch-up) late, plus 0..`jitter`, the catch-ups
    /// `every` s apart (PulseAudio's null-sink monitor delivers so: 1.4-1.7 ms a second
    /// behind, 7-8 ms caught up every few seconds).
    Sawtooth {
        base: f64,
        jitter: f64,
        ramp: f64,
        every: f64,
    },
    /// Uniform, and from `at` s on `step` s longer (or shorter): the path changed.
    PathChange {
        base: f64,
        jitter: f64,
        at: f64,
        step: f64,
    },
    /// Uniform, then calm: 0..`jitter` until `until` s, 0..`calm` after.
    Calming {
        base: f64,
        jitter: f64,
        until: f64,
        calm: f64,
    },
}

impl Link {
    fn delay(&self, t: f64, rng: &mut StdRng) -> f64 {
        match *self {
            Link::Uniform { base, jitter } => base + rng.gen::<f64>() * jitter,
            Link::Bursts {
                base,
                jitter,
                every,
                len,
                burst,
            } => {
                let d = base + rng.gen::<f64>() * jitter;
                if t % every < len {
                    d + rng.gen::<f64>() * burst
                } else {
                    d
                }
            }
            Link::Tcp {
                base,
                jitter,
                loss,
                rto_extra,
            } => {
                let d = base + rng.gen::<f64>() * jitter;
                if rng.gen::<f64>() < loss {
                    d + 2.0 * base + rto_extra
                } else {
                    d
                }
            }
            Link::Stalls {
                base,
                jitter,
                every,
                stall,
            } => {
                let d = base + rng.gen::<f64>() * jitter;
                let into = t % every;
                if t >= every && into < stall {
                    d + stall - into
                } else {
                    d
                }
            }
            Link::BusySender {
                base,
                late,
                jitter,
                on_time,
            } => {
                if rng.gen::<f64>() < on_time {
                    base
                } else {
                    base + late + rng.gen::<f64>() * jitter
                }
            }
            Link::Sawtooth {
                base,
                jitter,
                ramp,
                every,
            } => base + rng.gen::<f64>() * jitter + ramp * (t % every),
            Link::PathChange {
                base,
                jitter,
                at,
                step,
            } => base + rng.gen::<f64>() * jitter + if t >= at { step } else { 0.0 },
            Link::Calming {
                base,
                jitter,
                until,
                calm,
            } => base + rng.gen::<f64>() * if t < until { jitter } else { calm },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    skew_ppm: f64,
    packet_ms: f64,
    period_ms: f64,
    /// The sender posts its audio in blocks this long (ms); 0: as each packet completes.
    block_ms: f64,
    /// The engine is told the sender's block (its hello's `Block-Usec`).
    block_told: bool,
    link: Link,
    /// Silence: `len` s of every `every` s of the stream (0, 0: none).
    pause_every: f64,
    pause_len: f64,
    /// The audio repeats itself with this period (ms; a tone): where it is not silent, a trim
    /// cuts or repeats one whole period of at least a chunk, as the engine's `tsm` does (0:
    /// audio that never repeats).
    audio_period_ms: f64,
    secs: f64,
    target: Target,
    max_ms: u64,
    seed: u64,
}

impl Scenario {
    fn lan(name: &'static str, skew_ppm: f64, period_ms: f64, secs: f64, seed: u64) -> Scenario {
        Scenario {
            name,
            skew_ppm,
            packet_ms: 10.0,
            period_ms,
            block_ms: 0.0,
            block_told: false,
            link: Link::Uniform {
                base: 0.0002,
                jitter: 0.002,
            },
            pause_every: 0.0,
            pause_len: 0.0,
            audio_period_ms: 0.0,
            secs,
            target: Target::Auto,
            max_ms: 1000,
            seed,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    /// From the first packet until the start of the first 5 s in which the latency stayed
    /// within 1 ms of the target, s.
    lock_s: f64,
    underruns_after_start: u64,
    concealments_after_start: u64,
    /// From the first packet on, the start included.
    underruns: u64,
    concealments: u64,
    /// Largest |ratio − exact ratio| after 2 s and after the start, ppm.
    ratio_err_after_2s_ppm: f64,
    ratio_err_after_start_ppm: f64,
    /// Largest |ratio − exact ratio| in the 10 s after each concealment (after the start).
    ratio_err_after_conceal_ppm: f64,
    mean_latency_ms: f64,
    /// Largest |latency − target| after the start, ms.
    max_err_after_start_ms: f64,
    final_target_ms: f64,
    max_target_ms: f64,
    /// When the target was last more than 2 ms above its final value, s.
    target_settled_s: f64,
    /// When the latency was last more than 2 ms off the final target, s.
    latency_settled_s: f64,
    trimmed: u64,
    dropped: u64,
    /// |learnt skew − the clocks' skew| at the end, ppm.
    final_skew_err_ppm: f64,
}

struct Device {
    consumed: u64,
    missing: u64,
    reports: Vec<(u64, u64, u64)>,
}

fn us(t: f64) -> u64 {
    (t * 1e6) as u64 + 1_000_000
}

fn silent(s: &Scenario, pos: f64) -> bool {
    s.pause_every > 0.0 && (pos / f64::from(RATE)) % s.pause_every < s.pause_len
}

/// Whether the block at `pos` is in a pause the engine trims in: silent, and so was the audio
/// [`PAUSE_SEC`] before it (the scenario's pauses are unbroken).
fn in_pause(s: &Scenario, pos: f64) -> bool {
    silent(s, pos) && silent(s, pos - PAUSE_SEC * f64::from(RATE))
}

/// The audio part: executes a plan with the counting resampler.
fn execute(ctl: &mut Controller, s: &Scenario, plan: Plan, phase: &mut f64) {
    let _ = plan.drop_frames;
    if plan.trim_frames != 0 {
        let block = CHUNK as u64;
        let head = ctl.read_position();
        let fifo = ctl.fifo_frames();
        if plan.trim_frames > 0 {
            let want = plan.trim_frames as u64;
            let mut n = 0;
            while n * block < want
                && (n + 1) * block <= fifo
                && in_pause(s, head + (n * block) as f64)
                && silent(s, head + ((n + 1) * block) as f64 - 1.0)
            {
                n += 1;
            }
            if n > 0 {
                ctl.on_trimmed(want.min(n * block), 0);
            } else if plan.reshape {
                let lag = period_lag(s, plan.trim_frames as u64, fifo);
                ctl.on_trimmed(lag, 0);
            }
        } else if fifo >= block && in_pause(s, head) && silent(s, head + block as f64 - 1.0) {
            ctl.on_trimmed(0, (-plan.trim_frames) as u64);
        } else if plan.reshape {
            let lag = period_lag(s, (-plan.trim_frames) as u64, fifo);
            ctl.on_trimmed(0, lag);
        }
    }
    if plan.feed_frames == 0 {
        return;
    }
    let mut left = ctl.fifo_frames() / CHUNK as u64 * CHUNK as u64;
    while left >= CHUNK as u64 {
        *phase += CHUNK as f64 * plan.ratio;
        let out = phase.floor();
        *phase -= out;
        ctl.on_produced(CHUNK as u64, out as u64);
        left -= CHUNK as u64;
    }
}

/// The whole period of the scenario's audio the engine's `tsm` would cut or repeat for a trim
/// of `want` frames: the smallest multiple of the period of at least a chunk, at most 1.5 ×
/// `want` and 8 chunks (0: the audio does not repeat, or the FIFO holds too little).
fn period_lag(s: &Scenario, want: u64, fifo: u64) -> u64 {
    if s.audio_period_ms <= 0.0 {
        return 0;
    }
    let p = s.audio_period_ms * f64::from(RATE) / 1000.0;
    let lag = ((CHUNK as f64 / p).ceil() * p).round() as u64;
    if lag <= (want + want / 2).min(8 * CHUNK as u64) && fifo >= lag + CHUNK as u64 {
        lag
    } else {
        0
    }
}

fn simulate(s: Scenario) -> Figures {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let f = f64::from(RATE);
    // Sender slow by skew/2, device fast by skew/2.
    let fs = f * (1.0 - s.skew_ppm * 0.5e-6);
    let fd = f * (1.0 + s.skew_ppm * 0.5e-6);
    let r_true = fd / fs;
    let pkt = (s.packet_ms * f / 1000.0).round() as u64;
    let per = (s.period_ms * f / 1000.0).round() as u64;
    let block = (s.block_ms * f / 1000.0).round() as u64;
    let cfg = PlayoutConfig {
        rate: RATE,
        channels: 2,
        target: s.target,
        min_usec: 0,
        max_usec: s.max_ms * 1000,
    };
    let mut ctl = Controller::new(cfg, CHUNK, DELAY).unwrap();
    if s.block_told {
        ctl.set_sender_block((s.block_ms * f / 1000.0).round() as u64);
    }
    let pos0: i64 = (1 << 40) + i64::from(rng.gen::<u32>());
    let t0 = 0.3;
    // Sender: packet k is complete at (k+1)·pkt sender frames, posted with its block.
    let send_t = |k: u64| {
        let done = (k + 1) * pkt;
        let posted = if block > 0 {
            done.div_ceil(block) * block
        } else {
            done
        };
        t0 + posted as f64 / fs
    };
    let mut k = 0u64;
    let mut last_arrival = 0.0f64;
    let mut arrival = |k: u64, rng: &mut StdRng| {
        let st = send_t(k);
        let a = (st + s.link.delay(st, rng)).max(last_arrival);
        last_arrival = a;
        a
    };
    let mut next_arrival = arrival(k, &mut rng);
    let dev_start = 0.05;
    let mut pops = 0u64;
    let mut next_pop = dev_start;
    let mut dev = Device {
        consumed: 0,
        missing: 0,
        reports: Vec::new(),
    };
    let mut next_timer = 0.01;
    // rubato's sinc resampler keeps its delay's worth of the first audio it reads.
    let mut phase = -DELAY;
    let mut fig = Figures::default();
    let first_packet = next_arrival;
    let mut play_start: Option<f64> = None;
    let mut last_off = 0.0f64;
    let mut locked_at: Option<f64> = None;
    let mut lat_sum = 0.0;
    let mut lat_n = 0u64;
    let mut last_conceal = f64::NEG_INFINITY;
    let mut trace: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut next_trace = 0.0;
    let mut targets: Vec<(f64, f64, f64)> = Vec::new();
    let end = s.secs;
    loop {
        let t = next_arrival.min(next_pop).min(next_timer);
        if t > end {
            break;
        }
        if t == next_pop {
            let ring = ctl.produced() - dev.consumed;
            let take = ring.min(per);
            dev.consumed += take;
            dev.missing += per - take;
            dev.reports.push((us(t), dev.consumed, dev.missing));
            pops += 1;
            next_pop = dev_start + pops as f64 * per as f64 / fd + rng.gen::<f64>() * 0.0005;
            continue;
        }
        let now = us(t);
        for (at, c, m) in dev.reports.drain(..) {
            let before = ctl.stats().underruns;
            ctl.on_device(at, c, m);
            if play_start.is_some_and(|p| t - p > START_SEC) {
                fig.underruns_after_start += ctl.stats().underruns - before;
            }
        }
        if t == next_arrival {
            let pos = pos0 + (k * pkt) as i64;
            ctl.on_packet(now, pos, pkt);
            k += 1;
            next_arrival = arrival(k, &mut rng);
        }
        while let Some(n) = ctl.conceal_needed(now) {
            let before = ctl.stats().concealments;
            ctl.on_conceal(n as u64);
            if ctl.stats().concealments > before {
                last_conceal = t;
                if play_start.is_some_and(|p| t - p > START_SEC) {
                    fig.concealments_after_start += 1;
                }
            }
        }
        let plan = ctl.plan();
        execute(&mut ctl, &s, plan, &mut phase);
        // The worker sleeps until the next packet, or as long as the engine allows.
        next_timer = t + (ctl.wake_in_usec(now).max(1000) as f64) * 1e-6;
        if ctl.state() != PlayoutState::Playing {
            if std::env::var("PLAYOUT_SIM_DEBUG").ok().as_deref() == Some(s.name) && t < 1.0 {
                eprintln!(
                    "buffering t={t:7.3} lat={:.3} tgt={:.3} fifo={} missing={}",
                    ctl.latency_usec(now) as f64 / 1000.0,
                    ctl.target_frames() / f * 1000.0,
                    ctl.fifo_frames(),
                    dev.missing
                );
            }
            continue;
        }
        let p0 = *play_start.get_or_insert(t);
        let lat = ctl.latency_usec(now) as f64 / 1000.0;
        let target = ctl.target_frames() / f * 1000.0;
        if locked_at.is_none() {
            if (lat - target).abs() > 1.0 {
                last_off = t - first_packet;
            } else if t - first_packet - last_off >= 5.0 {
                locked_at = Some(last_off);
            }
        }
        let err_ppm = (ctl.ratio() - r_true).abs() * 1e6;
        if t - p0 > 2.0 {
            fig.ratio_err_after_2s_ppm = fig.ratio_err_after_2s_ppm.max(err_ppm);
        }
        if t - p0 > START_SEC {
            fig.ratio_err_after_start_ppm = fig.ratio_err_after_start_ppm.max(err_ppm);
            if t - last_conceal < 10.0 {
                fig.ratio_err_after_conceal_ppm = fig.ratio_err_after_conceal_ppm.max(err_ppm);
            }
            lat_sum += lat;
            lat_n += 1;
            fig.max_err_after_start_ms = fig.max_err_after_start_ms.max((lat - target).abs());
        }
        fig.max_target_ms = fig.max_target_ms.max(target);
        if t >= next_trace {
            next_trace = t + 0.05;
            if std::env::var("PLAYOUT_SIM_DEBUG").ok().as_deref() == Some(s.name)
                && s.seed
                    == std::env::var("PLAYOUT_SIM_SEED")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(s.seed)
                && t < std::env::var("PLAYOUT_SIM_UNTIL")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30.0)
            {
                eprintln!(
                    "t={t:7.3} lat={lat:7.3} tgt={target:7.3} fifo={} ring={} ratio_ppm={:8.1} skew_ppm={:8.1} conc={} und={}",
                    ctl.fifo_frames(),
                    ctl.produced() - dev.consumed,
                    (ctl.ratio() - 1.0) * 1e6,
                    ctl.skew_ppm(),
                    ctl.stats().concealments,
                    ctl.stats().underruns
                );
            }
            trace.push((t, lat, target, (ctl.ratio() - r_true) * 1e6));
            targets.push((t, target, lat));
        }
    }
    fig.lock_s = locked_at.unwrap_or(f64::INFINITY);
    fig.underruns = ctl.stats().underruns;
    fig.concealments = ctl.stats().concealments;
    fig.mean_latency_ms = lat_sum / lat_n.max(1) as f64;
    fig.final_target_ms = ctl.target_frames() / f * 1000.0;
    for &(t, target, lat) in &targets {
        if target > fig.final_target_ms + 2.0 {
            fig.target_settled_s = t;
        }
        if (lat - fig.final_target_ms).abs() > 2.0 {
            fig.latency_settled_s = t;
        }
    }
    fig.final_skew_err_ppm = (ctl.skew_ppm() - (r_true - 1.0) * 1e6).abs();
    let st = ctl.stats();
    fig.trimmed = st.trimmed_frames;
    fig.dropped = st.dropped_frames - st.trimmed_frames.min(st.dropped_frames);
    if let Ok(dir) = std::env::var("PLAYOUT_SIM_CSV") {
        let path = std::path::Path::new(&dir).join(format!("{}.csv", s.name));
        if let Ok(mut out) = std::fs::File::create(path) {
            let _ = writeln!(out, "t_s,latency_ms,target_ms,correction_ppm");
            for (t, l, tg, c) in trace {
                let _ = writeln!(out, "{t:.3},{l:.3},{tg:.3},{c:.1}");
            }
        }
    }
    fig
}

fn hours() -> f64 {
    std::env::var("PLAYOUT_SIM_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 0.1 } else { 1.0 })
}

fn run(cases: Vec<Scenario>) -> Vec<(Scenario, Figures)> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = cases
            .into_iter()
            .map(|c| sc.spawn(move || (c, simulate(c))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn print(results: &[(Scenario, Figures)]) {
    println!(
        "{:<22} {:>6} {:>4} {:>5} | {:>6} {:>4} {:>4} | {:>7} {:>7} {:>7} | {:>7} {:>6} {:>7} {:>7} {:>6} {:>6} | {:>7} {:>7}",
        "case", "skew", "pkt", "per", "lock_s", "und", "conc", "e2s_ppm", "est_ppm", "ecc_ppm",
        "lat_ms", "emax", "tgt_ms", "tmax_ms", "tset_s", "lset_s", "trimmed", "dropped"
    );
    for (s, f) in results {
        println!(
            "{:<22} {:>6} {:>4} {:>5.1} | {:>6.2} {:>4} {:>4} | {:>7.0} {:>7.0} {:>7.0} | {:>7.2} {:>6.2} {:>7.2} {:>7.2} {:>6.1} {:>6.1} | {:>7} {:>7}",
            s.name, s.skew_ppm, s.packet_ms, s.period_ms, f.lock_s, f.underruns_after_start,
            f.concealments_after_start, f.ratio_err_after_2s_ppm, f.ratio_err_after_start_ppm,
            f.ratio_err_after_conceal_ppm, f.mean_latency_ms, f.max_err_after_start_ms,
            f.final_target_ms, f.max_target_ms,
            f.target_settled_s, f.latency_settled_s, f.trimmed, f.dropped
        );
    }
}

/// Skews ±2000, ±500, 0 ppm × device periods 5–40 ms on a LAN: no underrun after the
/// start, lock within 2.5 s, the correction within ±1000 ppm of the exact ratio after 2 s and
/// ±200 ppm after the start, a target in the tens of ms.
#[test]
fn drift_matrix() {
    let secs = hours() * 3600.0;
    let mut cases = Vec::new();
    let mut seed = 1;
    for skew in [-2000.0, -500.0, 0.0, 500.0, 2000.0] {
        for per in [5.0, 10.0, 21.333, 40.0] {
            cases.push(Scenario::lan("lan", skew, per, secs, seed));
            seed += 1;
        }
    }
    let results = run(cases);
    print(&results);
    let mut fails = Vec::new();
    for (s, f) in &results {
        let mut why = Vec::new();
        if f.underruns_after_start > 0 || f.concealments_after_start > 1 {
            why.push("underruns, or more than one concealment, after the start");
        }
        // Lock (5 s in a row within 1 ms of the target) within 2.5 s: the quick lines learn
        // the skew about a second in; at ±2000 ppm the latency has moved 1-2.5 ms by then and
        // the loop's ±1000 ppm takes that long again (0.8-2.3 s in these cases).
        if f.lock_s > 2.5 {
            why.push("no lock within 2.5 s");
        }
        if !f.lock_s.is_finite() {
            why.push("never locked");
        }
        // Until the skew is learnt (about a second in) the ratio is the start's
        // correction (±1000 ppm) alone: it may miss the exact one by the skew and that much.
        if f.ratio_err_after_2s_ppm > s.skew_ppm.abs() + START_CORRECTION * 1e6 + 10.0 {
            why.push("ratio beyond ±(skew + 1000 ppm) of the exact one after 2 s");
        }
        if f.ratio_err_after_start_ppm > 1.5 * CORRECTION * 1e6 {
            why.push("ratio beyond ±300 ppm of the exact one after the start");
        }
        if f.final_target_ms > 20.0 {
            why.push("target above 20 ms on a LAN with 10 ms packets");
        }
        if !why.is_empty() {
            fails.push(format!(
                "{} skew {} per {}: {}",
                s.name,
                s.skew_ppm,
                s.period_ms,
                why.join(", ")
            ));
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Two 120 s cases over `link`, skews −500 and +500 ppm (seeds `seed`, `seed + 1`): 20 ms
/// packets toward a fixed 60 ms target, a tone (2 ms period) as the audio — the drift test's
/// set-up on real daemons.
fn fixed_target_pair(names: [&'static str; 2], seed: u64, link: Link) -> Vec<Scenario> {
    names
        .into_iter()
        .zip([-500.0, 500.0])
        .zip([seed, seed + 1])
        .map(|((name, skew), seed)| Scenario {
            name,
            packet_ms: 20.0,
            link,
            target: Target::Fixed(60_000),
            audio_period_ms: 2.0,
            seed,
            ..Scenario::lan("", skew, 10.0, 120.0, seed)
        })
        .collect()
}

/// A sender that stalls (its daemon blocked, its VM descheduled) for longer than a fixed
/// target allows, every 15 s: each stall is concealed, the late audio is kept and taken out
/// again, and the learnt skew stays within 30 ppm of the clocks' (the drift test's bound on
/// real daemons).
#[test]
fn sender_stalls() {
    let results = run(fixed_target_pair(
        ["stalls_minus_500", "stalls_plus_500"],
        200,
        Link::Stalls {
            base: 0.0002,
            jitter: 0.002,
            every: 15.0,
            stall: 0.090,
        },
    ));
    print(&results);
    for (s, f) in &results {
        assert!(
            f.concealments_after_start >= 6 && f.underruns_after_start == 0,
            "{}: the stalls must be concealed before the device runs dry: {f:?}",
            s.name
        );
        assert!(
            f.final_skew_err_ppm <= 30.0 && (f.mean_latency_ms - 60.0).abs() <= 1.0,
            "{}: {f:?}",
            s.name
        );
    }
}

/// A busy sender (its sending thread woken 2-5 ms late, one packet in 500 on time) toward a
/// fixed target, as the drift test on real daemons may see on a loaded machine: no underrun,
/// the mean latency on the target, the skew learnt. What this case also shows, and does not
/// hold: the stream's line is the earliest arrival of the last 2 s, so each on-time packet
/// moves it earlier by the sender's usual lateness for 2 s and then back, and the latency as
/// measured steps by as much both times (`emax`, 2.0-2.3 ms) while the loop chases the steps
/// (up to ±1000 ppm beyond the skew). A line with a longer memory (an early observation given
/// up at 100 ppm), or the second earliest of three seconds, did not do better in this
/// simulation and did worse on the drift matrix; the README lists it as a limitation.
#[test]
fn busy_sender() {
    let results = run(fixed_target_pair(
        ["busy_minus_500", "busy_plus_500"],
        300,
        Link::BusySender {
            base: 0.0002,
            late: 0.002,
            jitter: 0.003,
            on_time: 0.002,
        },
    ));
    print(&results);
    for (s, f) in &results {
        assert!(
            f.underruns_after_start == 0
                && (f.mean_latency_ms - 60.0).abs() <= 0.5
                && f.final_skew_err_ppm <= 30.0,
            "{}: {f:?}",
            s.name
        );
    }
}

/// A sender whose delivery falls behind by 1.7 ms a second and catches up every 4.5 s (a
/// null-sink monitor at the far end of a record tunnel): no underrun, the latency on the
/// target on average. What this case also shows, and does not hold: the skew estimator
/// takes each catch-up out as a step of the path, so it learns the ramp (1.7 ms a second,
/// final skew error ~1680 ppm) instead of the clocks, and the loop trims ~10000 frames in
/// 120 s. Keeping recurring jumps of one sign in the line (tried) learnt the clocks here (2.5
/// ppm) but made the drift test on real daemons stray 3.9-4.1 ms from its target in 2 of 4
/// runs (0 of 4 without); the README lists it as a limitation.
#[test]
fn sawtooth_sender() {
    let results = run(fixed_target_pair(
        ["sawtooth_minus_500", "sawtooth_plus_500"],
        400,
        Link::Sawtooth {
            base: 0.0002,
            jitter: 0.002,
            ramp: 0.0017,
            every: 4.5,
        },
    ));
    print(&results);
    for (s, f) in &results {
        assert!(
            f.underruns_after_start == 0 && (f.mean_latency_ms - 60.0).abs() <= 0.5,
            "{}: {f:?}",
            s.name
        );
    }
}

/// A path that gets 10 ms longer, or shorter, 60 s in: the skew stays the clocks'.
#[test]
fn path_change() {
    let mut cases = Vec::new();
    for (names, seed, step) in [
        (["longer_minus_500", "longer_plus_500"], 500, 0.010),
        (["shorter_minus_500", "shorter_plus_500"], 510, -0.010),
    ] {
        cases.extend(fixed_target_pair(
            names,
            seed,
            Link::PathChange {
                base: 0.015,
                jitter: 0.002,
                at: 60.0,
                step,
            },
        ));
    }
    let results = run(cases);
    print(&results);
    for (s, f) in &results {
        assert!(
            f.underruns_after_start == 0 && f.final_skew_err_ppm <= 30.0,
            "{}: {f:?}",
            s.name
        );
    }
}

/// Jitter traces: LAN, Wi-Fi-like bursts, a WAN with TCP retransmission stalls, a sender
/// posting 500 ms blocks, and a link that calms down (audio with pauses).
#[test]
fn jitter_traces() {
    let base = Scenario::lan("", 300.0, 10.0, 180.0, 100);
    let results = run(vec![
        Scenario {
            name: "lan",
            ..base
        },
        Scenario {
            name: "wifi_bursts",
            link: Link::Bursts {
                base: 0.002,
                jitter: 0.003,
                every: 20.0,
                len: 2.0,
                burst: 0.040,
            },
            seed: 101,
            ..base
        },
        Scenario {
            name: "wan_tcp",
            packet_ms: 20.0,
            link: Link::Tcp {
                base: 0.020,
                jitter: 0.005,
                loss: 0.01,
                rto_extra: 0.005,
            },
            seed: 102,
            ..base
        },
        Scenario {
            name: "blocks_500ms",
            block_ms: 500.0,
            seed: 103,
            ..base
        },
        Scenario {
            name: "calming_pauses",
            link: Link::Calming {
                base: 0.002,
                jitter: 0.060,
                until: 60.0,
                calm: 0.002,
            },
            pause_every: 2.0,
            pause_len: 0.3,
            secs: 90.0,
            seed: 104,
            ..base
        },
    ]);
    print(&results);
    let get = |n: &str| &results.iter().find(|(s, _)| s.name == n).unwrap().1;
    let mut fails = Vec::new();
    let lan = get("lan");
    if lan.underruns_after_start > 0 || lan.final_target_ms > 20.0 {
        fails.push(format!("lan: {lan:?}"));
    }
    let wan = get("wan_tcp");
    // A retransmission needs about a round trip (40 ms) more than the jitter.
    if !(40.0..=80.0).contains(&wan.final_target_ms) || wan.underruns_after_start > 3 {
        fails.push(format!("wan_tcp: {wan:?}"));
    }
    let blocks = get("blocks_500ms");
    if blocks.underruns_after_start > 0 || blocks.concealments_after_start > 0 {
        fails.push(format!("blocks_500ms: {blocks:?}"));
    }
    let calm = get("calming_pauses");
    // Calm from 60 s: the target is down within ~11 s (its 10 s window) and the latency
    // follows in the pauses.
    if calm.target_settled_s > 72.0 || calm.latency_settled_s > 90.0 {
        fails.push(format!("calming_pauses: {calm:?}"));
    }
    // The correction after a concealment (±200 ppm) on top of the skew's own error on this
    // link: after 60 s of 0–60 ms jitter, each second's earliest arrival sits milliseconds
    // later than once the link is calm, and the line through them is off by up to ~140 ppm
    // for its memory (30 s).
    if calm.ratio_err_after_conceal_ppm > 3.0 * CORRECTION * 1e6 {
        fails.push(format!(
            "calming_pauses correction after a concealment: {calm:?}"
        ));
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// A PipeWire sender whose graph runs 1024-frame quanta (21.3 ms) and sends 20 ms packets:
/// each packet leaves with the quantum that completes it, 1.3 ms later than the one before
/// against the stream's clock, up to 20 ms. Told that block (the hello's `Block-Usec`), the
/// engine holds the ramp from the first packet: no underrun or concealment at the start; not
/// told, it learns the ramp over its first 0.3 s by running short.
#[test]
fn pipewire_quanta_sender() {
    let base = Scenario {
        packet_ms: 20.0,
        block_ms: 1024.0 / 48.0,
        secs: 30.0,
        ..Scenario::lan("quanta_told", 300.0, 10.0, 30.0, 200)
    };
    let mut cases = Vec::new();
    for seed in 200..204 {
        cases.push(Scenario {
            block_told: true,
            seed,
            ..base
        });
        cases.push(Scenario {
            name: "quanta_not_told",
            seed,
            ..base
        });
    }
    let results = run(cases);
    print(&results);
    let mut fails = Vec::new();
    let mut short_when_not_told = 0;
    for (s, f) in &results {
        if s.block_told {
            if f.underruns + f.concealments > 0 || f.final_target_ms > 50.0 {
                fails.push(format!("{} seed {}: {f:?}", s.name, s.seed));
            }
        } else {
            short_when_not_told += f.underruns + f.concealments;
        }
    }
    // The case the header is for: without it the start runs short.
    if short_when_not_told == 0 {
        fails.push("not told, no start ran short: the case does not show the ramp".into());
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
