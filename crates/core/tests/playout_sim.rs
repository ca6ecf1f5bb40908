//! Simulation of the drift-correction control loop ([`Controller`]) against clocks with a
//! fixed skew, network jitter, stalls and device periods of 5–40 ms.
//!
//! The audio part is replaced by a counting model of the resampler (output frames =
//! input × ratio, fractional phase carried over), so a simulated day takes about a second in
//! release mode. Simulated length: `PLAYOUT_SIM_HOURS` (default 24 in release builds, 1 in
//! debug builds, where the 24-hour run would take minutes).
//!
//! Per case it prints: the convergence time, underruns (device ran dry), overruns (slews),
//! concealments (stream late: stalls longer than the buffer), and from t = 20 s on: the
//! latency error RMS (the controller's latency against its target), the true latency wander
//! (RMS about its mean, computed from the exact clocks) and its bias, and the ratio error
//! RMS against the exact ratio of the two clocks, in ppm.

use opus_tunnel_core::playout::{Controller, Plan, PlayoutConfig, PlayoutState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RATE: u32 = 48_000;

#[derive(Debug, Clone, Copy)]
struct Case {
    skew_ppm: f64,
    packet_ms: f64,
    period_ms: f64,
    jitter_ms: f64,
    stall_every_s: f64,
    stall_ms: f64,
    target_ms: u64,
    hours: f64,
    seed: u64,
}

impl Case {
    /// A case with 0–20 ms of arrival jitter and a 100 ms stall every 600 s.
    fn stalling(
        skew_ppm: f64,
        packet_ms: f64,
        period_ms: f64,
        target_ms: u64,
        hours: f64,
        seed: u64,
    ) -> Case {
        Case {
            skew_ppm,
            packet_ms,
            period_ms,
            jitter_ms: 20.0,
            stall_every_s: 600.0,
            stall_ms: 100.0,
            target_ms,
            hours,
            seed,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    conv_s: f64,
    underruns: u64,
    overruns: u64,
    concealments: u64,
    stalls: u64,
    est_err_rms_ms: f64,
    true_wander_rms_ms: f64,
    true_bias_ms: f64,
    ratio_err_rms_ppm: f64,
    ratio_step_rms_ppm: f64,
    ratio_jitter_rms_ppm: f64,
    ratio_conv_s: f64,
    ratio_jitter_ss_ppm: f64,
    ratio_err_ss_ppm: f64,
    final_target_ms: f64,
    drift_ppm: f64,
    /// Longest time after the end of a stall until the loop was back: locked, latency within
    /// 5 ms of the setpoint and ratio within 2000 ppm (3.5 cents) of the exact one, s.
    recover_s: f64,
}

struct Net {
    next_stall: f64,
    stall_start: f64,
    stall_end: f64,
    stalls: u64,
    last: f64,
    fs: f64,
    pkt: u64,
    base_delay: f64,
    jit: f64,
    c: Case,
}

impl Net {
    /// Arrival time of packet `k`: sent when its audio is complete, delayed by the base delay
    /// and 0–jitter, held back by a stall, and never before the previous one (TCP order).
    fn arrival(&mut self, k: u64, rng: &mut StdRng) -> f64 {
        let send = (k + 1) as f64 * self.pkt as f64 / self.fs;
        if send >= self.next_stall {
            self.stall_start = self.next_stall;
            self.stall_end = self.next_stall + self.c.stall_ms / 1000.0;
            self.next_stall += self.c.stall_every_s * (0.5 + rng.gen::<f64>());
            self.stalls += 1;
        }
        let mut t = send + self.base_delay + rng.gen::<f64>() * self.jit;
        if send >= self.stall_start && send < self.stall_end {
            t = t.max(self.stall_end + self.base_delay + rng.gen::<f64>() * self.jit);
        }
        t = t.max(self.last);
        self.last = t;
        t
    }
}

/// The resampler's counting model: feeds the plan's whole chunks, each giving
/// `chunk · ratio` output frames (the fraction carried in `phase`).
/// The sink's IO thread: pops one period from the ring at each tick and publishes its
/// counters; every pop is reported (a queue, as in the receiver).
#[derive(Default)]
struct Device {
    consumed: u64,
    missing: u64,
    pops: u64,
    reports: std::collections::VecDeque<(u64, u64, u64)>,
}

impl Device {
    /// Pops `period` frames at `now_usec`, as many as the ring holds; returns how many.
    fn pop(&mut self, ctl: &Controller, period: u64, now_usec: u64) -> u64 {
        let ring = ctl.produced() - self.consumed;
        let take = ring.min(period);
        self.consumed += take;
        self.missing += period - take;
        self.reports
            .push_back((now_usec, self.consumed, self.missing));
        self.pops += 1;
        take
    }

    /// Hands the reports queued so far to the worker's controller.
    fn report(&mut self, ctl: &mut Controller) {
        while let Some((at, consumed, missing)) = self.reports.pop_front() {
            ctl.on_device(at, consumed, missing);
        }
    }
}

fn resample(ctl: &mut Controller, plan: &Plan, chunk: usize, phase: &mut f64) {
    let mut left = plan.feed_frames;
    while left >= chunk as u64 {
        *phase += chunk as f64 * plan.ratio;
        let out = phase.floor();
        *phase -= out;
        ctl.on_produced(chunk as u64, out as u64);
        left -= chunk as u64;
    }
}

/// Running sums of the figures taken at each device pop after the first 20 s (`n` of them),
/// and in the steady state (`n_ss`).
#[derive(Default)]
struct Sums {
    n: u64,
    est_sq: f64,
    tl_sum: f64,
    tl_sq: f64,
    r_sq: f64,
    step_sq: f64,
    jit_sq: f64,
    n_ss: u64,
    jit_ss_sq: f64,
    rerr_ss_sq: f64,
}

fn simulate(c: Case) -> Figures {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let f = f64::from(RATE);
    // Sender clock slow by skew/2, device fast by skew/2: the device consumes
    // (1+skew) times what the sender produces.
    let a = -c.skew_ppm * 0.5e-6;
    let b = c.skew_ppm * 0.5e-6;
    let fs = f * (1.0 + a);
    let fd = f * (1.0 + b);
    let r_true = fd / fs;
    let pkt = (c.packet_ms * f / 1000.0).round() as u64;
    let per = (c.period_ms * f / 1000.0).round() as u64;
    let base_delay = 0.005;
    let jit = c.jitter_ms / 1000.0;
    let sched_jit = 0.0005;
    let end_t = c.hours * 3600.0;

    let cfg = PlayoutConfig {
        rate: RATE,
        channels: 2,
        target_usec: c.target_ms * 1000,
        max_usec: 1_000_000,
    };
    let chunk = (RATE / 200) as usize;
    let delay = 64.0; // 128-tap sinc: half the filter
    let mut ctl = Controller::new(cfg, chunk, delay).unwrap();

    // Sender / network.
    let ts0: u32 = rng.gen();
    let mut k: u64 = 0;
    let mut net = Net {
        next_stall: if c.stall_every_s > 0.0 {
            30.0 + rng.gen::<f64>() * c.stall_every_s
        } else {
            f64::INFINITY
        },
        stall_start: -1.0,
        stall_end: -1.0,
        stalls: 0,
        last: 0.0,
        fs,
        pkt,
        base_delay,
        jit,
        c,
    };
    let mut next_arrival = net.arrival(k, &mut rng);
    // Device.
    let dev_start = 0.3;
    let mut next_pop = dev_start;
    let mut dev = Device::default();
    // Worker timer.
    let mut next_timer = 0.01;
    // Resampler model.
    let mut phase = 0.0f64;

    // Metrics.
    let mut sums = Sums::default();
    let mut last_ratio = 1.0;
    let mut ema = r_true;
    let mut ratio_bad = 0.0f64;
    let mut last_bad = 0.0f64;
    let mut underruns_after = 0u64;
    let mut overruns_after = 0u64;
    let mut conceal_after = 0u64;
    let mut recover_s = 0.0f64;
    let stall_trace = std::env::var("PLAYOUT_SIM_STALL_TRACE").ok() == Some(c.seed.to_string());
    let mut next_st = 0.0f64;
    let stall_n: u64 = std::env::var("PLAYOUT_SIM_STALL_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut per_stall: Vec<f64> = Vec::new();
    let metric_from = 20.0;
    // Exact lines: stream end position by mean arrival time, device frames consumed.
    let s0 = (1u64 << 40) as f64 + f64::from(ts0);
    let jit_mean = jit / 2.0;
    let trace = std::env::var("PLAYOUT_SIM_TRACE").is_ok()
        && c.seed.to_string() == std::env::var("PLAYOUT_SIM_TRACE").unwrap_or_default();
    let per_sec = (1000.0 / c.period_ms) as u64;
    let to_us = |t: f64| (t * 1e6) as u64 + 1_000_000;

    loop {
        let t = next_arrival.min(next_pop).min(next_timer);
        if t > end_t {
            break;
        }
        if t == next_pop {
            // The IO thread pops one period and publishes its counters.
            dev.pop(&ctl, per, to_us(t));
            next_pop = dev_start + dev.pops as f64 * per as f64 / fd + rng.gen::<f64>() * sched_jit;
            // Metrics at each pop, from the worker's view of the last wake.
            if t > metric_from && ctl.state() != PlayoutState::Buffering {
                let est_err =
                    ctl.latency_usec(to_us(t)) as f64 / 1000.0 - ctl.setpoint_frames() / f * 1000.0;
                let s_true = s0 + (t - base_delay - jit_mean) * fs;
                let c_true =
                    (t - dev_start - sched_jit / 2.0) * fd + per as f64 - dev.missing as f64;
                let lat_true = s_true - ctl.read_position()
                    + ctl.delay_frames()
                    + (ctl.produced() as f64 - c_true) / ctl.ratio();
                let tl = (lat_true - ctl.setpoint_frames()) / f * 1000.0;
                sums.n += 1;
                sums.est_sq += est_err * est_err;
                sums.tl_sum += tl;
                sums.tl_sq += tl * tl;
                let re = (ctl.ratio() - r_true) * 1e6;
                sums.r_sq += re * re;
                let st = (ctl.ratio() - last_ratio) * 1e6;
                sums.step_sq += st * st;
                // Jitter: the ratio about its own 10-second moving average.
                let w = if sums.n == 1 {
                    1.0
                } else {
                    (per as f64 / f / 10.0).min(1.0)
                };
                ema += w * (ctl.ratio() - ema);
                let jt = (ctl.ratio() - ema) * 1e6;
                if trace && jt.abs() > 3.0 && dev.pops % 20 == 0 {
                    eprintln!(
                        "JIT t={t:.2} jt={jt:.2} stall_end={:.2} lat={:.3} sp={:.3} srate={:.4} rephase={}/{}",
                        net.stall_end,
                        ctl.latency_usec(to_us(t)) as f64 / 1000.0,
                        ctl.setpoint_frames() / f * 1000.0,
                        (ctl.stream_dll().rate() / f - 1.0) * 1e6,
                        ctl.stream_dll().rephases(),
                        ctl.device_dll().rephases()
                    );
                }
                sums.jit_sq += jt * jt;
                if t > 300.0 {
                    sums.n_ss += 1;
                    sums.jit_ss_sq += jt * jt;
                    let re = (ctl.ratio() - r_true) * 1e6;
                    sums.rerr_ss_sq += re * re;
                }
            }
            if trace && dev.pops % (per_sec * 30).max(1) == 0 {
                eprintln!(
                    "t={t:8.1} ratio_ppm={:9.3} ff_ppm={:9.3} srate_ppm={:9.3} drate_ppm={:9.3} lat_ms={:8.3} tgt={:6.1} sj={:.4} dj={:.4}",
                    (ctl.ratio() - 1.0) * 1e6,
                    (ctl.device_dll().rate() / ctl.stream_dll().rate() - 1.0) * 1e6,
                    (ctl.stream_dll().rate() / f - 1.0) * 1e6,
                    (ctl.device_dll().rate() / f - 1.0) * 1e6,
                    ctl.latency_usec(to_us(t)) as f64 / 1000.0,
                    ctl.target_frames() / f * 1000.0,
                    ctl.stream_dll().jitter_sec() * 1000.0,
                    ctl.device_dll().jitter_sec() * 1000.0,
                );
            }
            last_ratio = ctl.ratio();
            continue;
        }
        // The worker wakes: a packet, or its timer.
        let now = to_us(t);
        if !dev.reports.is_empty() {
            let before = ctl.stats().underruns;
            dev.report(&mut ctl);
            if t > metric_from {
                underruns_after += ctl.stats().underruns - before;
            }
        }
        if t == next_arrival {
            // The controller takes unwrapped positions (the Playout unwraps RTP itself).
            let pos = (1i64 << 40) + i64::from(ts0) + (k * pkt) as i64;
            ctl.on_packet(now, pos, pkt);
            k += 1;
            next_arrival = net.arrival(k, &mut rng);
        } else {
            next_timer = t + 0.01;
        }
        while let Some(nc) = ctl.conceal_needed(now) {
            let before = ctl.stats().concealments;
            ctl.on_conceal(nc as u64);
            if t > metric_from {
                conceal_after += ctl.stats().concealments - before;
            }
        }
        let before = ctl.stats().overruns;
        let plan = ctl.plan();
        resample(&mut ctl, &plan, chunk, &mut phase);
        if t > metric_from {
            overruns_after += ctl.stats().overruns - before;
        }
        let unlocked = ctl.state() != PlayoutState::Locked;
        let after_stall = t - net.stall_end > 5.0;
        // Ratio within 100 ppm of the exact one.
        if t < 600.0 && (unlocked || ((ctl.ratio() - r_true).abs() > 100e-6 && after_stall)) {
            ratio_bad = t;
        }
        // Recovery after a stall: locked, near the target, ratio near the exact one.
        let since = t - net.stall_end;
        if net.stalls > 0 && since > -3.0 && since < 30.0 && t > metric_from {
            let lat_ms = ctl.latency_usec(now) as f64 / 1000.0;
            let off = (lat_ms - ctl.setpoint_frames() / f * 1000.0).abs();
            if unlocked || off > 5.0 || (ctl.ratio() - r_true).abs() > 2000e-6 {
                recover_s = recover_s.max(since);
                if per_stall.len() < net.stalls as usize {
                    per_stall.resize(net.stalls as usize, 0.0);
                }
                let k = net.stalls as usize - 1;
                per_stall[k] = per_stall[k].max(since);
            }
            if stall_trace && net.stalls == stall_n && t >= next_st {
                next_st = t + 0.2;
                eprintln!(
                    "STALL +{since:6.2}s {:?} lat={lat_ms:8.2} tgt={:6.1} sp={:6.1} ratio_ppm={:9.1} fifo={} ff={:9.1} srate={:9.1} drate={:9.1} sreph={} mae={:.4} bw={:.5}",
                    ctl.state(),
                    ctl.target_frames() / f * 1000.0,
                    ctl.setpoint_frames() / f * 1000.0,
                    (ctl.ratio() - 1.0) * 1e6,
                    ctl.fifo_frames(),
                    (ctl.device_dll().rate() / ctl.stream_dll().rate() - 1.0) * 1e6,
                    (ctl.stream_dll().rate() / f - 1.0) * 1e6,
                    (ctl.device_dll().rate() / f - 1.0) * 1e6,
                    ctl.stream_dll().rephases(),
                    ctl.stream_dll().jitter_sec(),
                    ctl.stream_dll().bandwidth(),
                );
            }
        }
        // Convergence: controller latency within 1 ms of its setpoint.
        let lat_off = (ctl.latency_usec(now) as f64 - ctl.setpoint_frames() / f * 1e6).abs();
        if t < 600.0 && (unlocked || (lat_off > 1000.0 && after_stall)) {
            last_bad = t;
        }
    }
    if stall_trace {
        eprintln!("recovery per stall (s): {per_stall:.1?}");
    }
    let nn = sums.n.max(1) as f64;
    let mean = sums.tl_sum / nn;
    Figures {
        conv_s: last_bad,
        underruns: underruns_after,
        overruns: overruns_after,
        concealments: conceal_after,
        stalls: net.stalls,
        est_err_rms_ms: (sums.est_sq / nn).sqrt(),
        true_wander_rms_ms: (sums.tl_sq / nn - mean * mean).max(0.0).sqrt(),
        true_bias_ms: mean,
        ratio_err_rms_ppm: (sums.r_sq / nn).sqrt(),
        ratio_step_rms_ppm: (sums.step_sq / nn).sqrt(),
        ratio_jitter_rms_ppm: (sums.jit_sq / nn).sqrt(),
        ratio_conv_s: ratio_bad,
        ratio_jitter_ss_ppm: (sums.jit_ss_sq / sums.n_ss.max(1) as f64).sqrt(),
        ratio_err_ss_ppm: (sums.rerr_ss_sq / sums.n_ss.max(1) as f64).sqrt(),
        final_target_ms: ctl.target_frames() / f * 1000.0,
        drift_ppm: ctl.stats().drift_ppm,
        recover_s,
    }
}

fn hours() -> f64 {
    if let Ok(h) = std::env::var("PLAYOUT_SIM_HOURS") {
        if let Ok(h) = h.parse::<f64>() {
            return h;
        }
    }
    if cfg!(debug_assertions) {
        1.0
    } else {
        24.0
    }
}

fn run_cases(cases: Vec<Case>) -> Vec<(Case, Figures)> {
    std::thread::scope(|s| {
        let hs: Vec<_> = cases
            .into_iter()
            .map(|c| s.spawn(move || (c, simulate(c))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn print_and_check(results: &[(Case, Figures)], check_convergence: bool) {
    println!(
        "{:>6} {:>5} {:>5} {:>6} | {:>6} {:>6} | {:>4} {:>4} {:>5}/{:<5} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>8} {:>7} {:>7} | {:>6} {:>9} {:>7}",
        "skew", "pkt", "per", "target", "conv_s", "rconv", "und", "ovr", "conc", "stall",
        "latRMSms", "trueRMS", "bias_ms", "rJitPPM", "rStepPPM", "rErrPPM", "rJit5m", "rErr5m", "tgt_ms", "drift_ppm", "recov_s"
    );
    let mut fails = Vec::new();
    for (c, f) in results {
        println!(
            "{:>6} {:>5} {:>5} {:>6} | {:>6.1} {:>6.1} | {:>4} {:>4} {:>5}/{:<5} | {:>8.4} {:>8.4} {:>7.3} | {:>8.4} {:>8.4} {:>8.3} {:>7.4} {:>7.4} | {:>6.1} {:>9.2} {:>7.2}",
            c.skew_ppm, c.packet_ms, c.period_ms, c.target_ms, f.conv_s, f.ratio_conv_s,
            f.underruns, f.overruns, f.concealments, f.stalls, f.est_err_rms_ms,
            f.true_wander_rms_ms, f.true_bias_ms, f.ratio_jitter_rms_ppm, f.ratio_step_rms_ppm,
            f.ratio_err_rms_ppm, f.ratio_jitter_ss_ppm, f.ratio_err_ss_ppm, f.final_target_ms,
            f.drift_ppm, f.recover_s
        );
        let mut why = Vec::new();
        if check_convergence && f.conv_s > 21.0 {
            why.push("latency converged after 20 s");
        }
        if f.underruns > 0 {
            why.push("underruns");
        }
        if f.overruns > 0 {
            why.push("overruns");
        }
        if f.est_err_rms_ms > 0.5 || f.true_wander_rms_ms > 0.5 {
            why.push("latency error RMS >= 0.5 ms");
        }
        // The ratio moves on purpose while the target glides after a concealment, and
        // while the rate estimates settle in the first minutes: the jitter bound holds
        // from 5 minutes on, in cases without target changes.
        if f.concealments == 0 && f.ratio_jitter_ss_ppm > 1.0 {
            why.push("ratio jitter >= 1 ppm RMS");
        }
        if !why.is_empty() {
            fails.push(format!("{c:?}: {}", why.join(", ")));
        }
    }
    assert!(fails.is_empty(), "failed cases:\n{}", fails.join("\n"));
}

/// The matrix of the issue: skews ±2000, ±500, 0 ppm × device periods 5–40 ms, 20 ms
/// packets, 0–20 ms jitter, a 100 ms stall every ~10 minutes, target 150 ms (a buffer
/// that rides out the stalls).
#[test]
fn drift_matrix() {
    let h = hours();
    println!("simulated hours per case: {h}");
    let mut cases = Vec::new();
    let mut seed = 1;
    for skew in [-2000.0, -500.0, 0.0, 500.0, 2000.0] {
        for period in [5.0, 10.0, 20.0, 40.0] {
            cases.push(Case::stalling(skew, 20.0, period, 150, h, seed));
            seed += 1;
        }
    }
    // Other packet durations.
    for (skew, pkt, per) in [
        (2000.0, 2.5, 10.0),
        (-2000.0, 60.0, 5.0),
        (500.0, 10.0, 40.0),
    ] {
        cases.push(Case::stalling(skew, pkt, per, 150, h, seed));
        seed += 1;
    }
    let results = run_cases(cases);
    print_and_check(&results, true);
}

/// The default target (60 ms) is shorter than a 100 ms stall: stalls are concealed (PLC),
/// each raises the target by a period, and it comes back down after 60 s without one.
/// Device underruns and overruns must still be zero. (Convergence is not checked here: an
/// early concealment moves the target while the loop is still acquiring.)
#[test]
fn stalls_at_default_target() {
    let h = hours();
    let mut cases = Vec::new();
    for (i, (skew, per)) in [(-2000.0, 10.0), (2000.0, 20.0), (0.0, 40.0)]
        .into_iter()
        .enumerate()
    {
        cases.push(Case::stalling(skew, 20.0, per, 60, h, 100 + i as u64));
    }
    let results = run_cases(cases);
    print_and_check(&results, false);
}

/// A stall longer than the buffer and the concealment limit (2 s, a VDI link that froze):
/// the engine stops concealing, buffers again, and the whole backlog arrives in one burst.
/// The loop must be back (locked, latency within 5 ms of the target, ratio within 2000 ppm
/// of the exact one) within 5 s of the stall's end, every time, with no device underrun.
#[test]
fn long_stalls_recover_within_5_s() {
    let h = hours().min(1.0);
    let mut cases = Vec::new();
    for (i, (skew, per, target)) in [(-500.0, 10.0, 60), (500.0, 20.0, 60), (2000.0, 5.0, 150)]
        .into_iter()
        .enumerate()
    {
        cases.push(Case {
            skew_ppm: skew,
            packet_ms: 20.0,
            period_ms: per,
            jitter_ms: 5.0,
            stall_every_s: 60.0,
            stall_ms: 2000.0,
            target_ms: target,
            hours: h,
            seed: 200 + i as u64,
        });
    }
    let results = run_cases(cases);
    for (c, f) in &results {
        println!(
            "{c:?}\n  -> recovered within {:.2} s, underruns {}",
            f.recover_s, f.underruns
        );
    }
    print_and_check_recovery(&results);
}

fn print_and_check_recovery(results: &[(Case, Figures)]) {
    let bad: Vec<_> = results
        .iter()
        .filter(|(_, f)| f.recover_s > 5.0 || f.underruns > 0)
        .map(|(c, f)| {
            format!(
                "{c:?}: recovered in {:.2} s, underruns {}",
                f.recover_s, f.underruns
            )
        })
        .collect();
    assert!(bad.is_empty(), "slow recoveries:\n{}", bad.join("\n"));
}

/// What the first seconds of one simulated stream did (see [`simulate_start`]).
#[derive(Debug, Default, Clone)]
struct StartFigures {
    /// Device pulls that found the ring short.
    underruns: u64,
    concealments: u64,
    /// Smallest audio (ring + FIFO) left after a device pull once locked, ms.
    min_margin_ms: f64,
    /// Largest pitch deviation (|ratio − 1|) once locked, ppm.
    max_dev_ppm: f64,
    /// Latency error against the target at the end, ms.
    final_err_ms: f64,
}

/// The start of a stream from a PipeWire sender to a PipeWire-like device, on a loaded
/// machine: the sender's graph hands it 1024-frame quanta and it sends each 20 ms packet as
/// soon as it is complete (one per quantum, two every 15th), the device pulls whole
/// 1024-frame quanta and runs before the stream starts, and now and then a scheduling
/// hiccup of 5–`hiccup_ms` ms holds a quantum's packets back (TCP keeps their order), or
/// one of the device's pulls 5–15 ms (the next one catches up), or the worker's timer 0–6 ms.
fn simulate_start(seed: u64, secs: f64, hiccup_ms: f64) -> StartFigures {
    let mut rng = StdRng::seed_from_u64(seed);
    let f = f64::from(RATE);
    let q = 1024u64;
    let pkt = 960u64;
    let cfg = PlayoutConfig {
        rate: RATE,
        channels: 2,
        target_usec: 60_000,
        max_usec: 1_000_000,
    };
    let chunk = (RATE / 200) as usize;
    let mut ctl = Controller::new(cfg, chunk, 32.0).unwrap();
    let to_us = |t: f64| (t * 1e6) as u64 + 1_000_000;
    // Packet arrivals, in order.
    let s_start = 0.2 + rng.gen::<f64>() * 0.05;
    let mut arrivals: Vec<f64> = Vec::new();
    let (mut acc, mut last) = (0u64, 0.0f64);
    let mut qn = 0u64;
    while arrivals.len() as f64 * pkt as f64 / f < secs + 1.0 {
        qn += 1;
        acc += q;
        let mut t = s_start + qn as f64 * q as f64 / f + 0.001 + rng.gen::<f64>() * 0.002;
        if rng.gen::<f64>() < 0.02 {
            t += 0.005 + rng.gen::<f64>() * (hiccup_ms / 1000.0 - 0.005);
        }
        while acc >= pkt {
            acc -= pkt;
            t = t.max(last);
            last = t;
            arrivals.push(t);
        }
    }
    let dev_start = 0.05 + rng.gen::<f64>() * 0.02;
    let mut next_pop = dev_start;
    let mut dev = Device::default();
    let mut next_timer = 0.01;
    let mut phase = 0.0f64;
    let mut k = 0usize;
    let mut fig = StartFigures {
        min_margin_ms: f64::INFINITY,
        ..StartFigures::default()
    };
    let ts0: i64 = 1 << 40;
    let trace = std::env::var("PLAYOUT_SIM_START_TRACE").ok() == Some(seed.to_string());
    loop {
        let next_arrival = arrivals.get(k).copied().unwrap_or(f64::INFINITY);
        let t = next_arrival.min(next_pop).min(next_timer);
        if t > s_start + secs {
            break;
        }
        if t == next_pop {
            let take = dev.pop(&ctl, q, to_us(t));
            if ctl.state() != PlayoutState::Buffering && dev.consumed > 0 {
                if take < q {
                    fig.underruns += 1;
                }
                let left = (ctl.produced() - dev.consumed) as f64 + ctl.fifo_frames() as f64;
                fig.min_margin_ms = fig.min_margin_ms.min(left / f * 1000.0);
            }
            next_pop = dev_start + dev.pops as f64 * q as f64 / f + rng.gen::<f64>() * 0.0005;
            if rng.gen::<f64>() < 0.01 {
                // The device's thread woke late: this pull comes late, the next on time.
                next_pop += 0.005 + rng.gen::<f64>() * 0.01;
            }
            continue;
        }
        let now = to_us(t);
        dev.report(&mut ctl);
        if t == next_arrival {
            ctl.on_packet(now, ts0 + (k as u64 * pkt) as i64, pkt);
            k += 1;
        } else {
            next_timer = t + 0.01;
            if rng.gen::<f64>() < 0.02 {
                // The worker thread wakes late.
                next_timer += rng.gen::<f64>() * 0.006;
            }
        }
        while let Some(n) = ctl.conceal_needed(now) {
            let before = ctl.stats().concealments;
            ctl.on_conceal(n as u64);
            fig.concealments += ctl.stats().concealments - before;
            if trace {
                eprintln!("CONCEAL t={:.3} frames={n}", t - s_start);
            }
        }
        let plan = ctl.plan();
        resample(&mut ctl, &plan, chunk, &mut phase);
        if trace {
            eprintln!(
                "t={:.3} {:?} lat={:.1} sp={:.1} tgt={:.1} ppm={:.0} ring={} fifo={} pkt={}",
                t - s_start,
                ctl.state(),
                ctl.latency_usec(now) as f64 / 1000.0,
                ctl.setpoint_frames() / 48.0,
                ctl.target_frames() / 48.0,
                (ctl.ratio() - 1.0) * 1e6,
                ctl.produced() - dev.consumed,
                ctl.fifo_frames(),
                t == next_arrival
            );
        }
        if ctl.state() == PlayoutState::Locked && dev.consumed > 0 {
            fig.max_dev_ppm = fig.max_dev_ppm.max((ctl.ratio() - 1.0).abs() * 1e6);
        }
    }
    let end = to_us(s_start + secs);
    fig.final_err_ms = (ctl.latency_usec(end) as f64 - 60_000.0) / 1000.0;
    fig
}

/// The first 10 s of 200 streams from a PipeWire sender on a loaded machine (hiccups of up
/// to 20 ms, 2 % of quanta): no concealment, no underrun, the pitch within 0.2 %.
/// `PLAYOUT_SIM_START_TRACE=<seed>` prints one start's state at every wake.
#[test]
fn pipewire_starts_keep_their_margin() {
    let mut fails = Vec::new();
    let (mut worst_margin, mut worst_dev) = (f64::INFINITY, 0.0f64);
    for seed in 0..200 {
        let s = simulate_start(seed, 10.0, 20.0);
        worst_margin = worst_margin.min(s.min_margin_ms);
        worst_dev = worst_dev.max(s.max_dev_ppm);
        if s.underruns > 0 || s.concealments > 0 || s.max_dev_ppm > 2000.0 {
            fails.push(format!("seed {seed}: {s:?}"));
        }
    }
    println!(
        "200 starts: smallest margin after a pull {worst_margin:.1} ms, largest pitch deviation {worst_dev:.0} ppm, {} failed",
        fails.len()
    );
    assert!(
        fails.is_empty(),
        "{} of 200 starts failed:\n{}",
        fails.len(),
        fails.join("\n")
    );
}
