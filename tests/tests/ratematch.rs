//! Spike (issue: "drift corrected by the core engine, or by PipeWire's adaptive resampler
//! through rate matching — measure both, keep one"): the PipeWire receiver
//! `libpipewire-module-opus-protocol-tcp` with `opus.resampler = engine` (rubato in the
//! connection thread) and `opus.resampler = pipewire` (the engine's ratio handed to the
//! stream's adapter through `SPA_IO_RateMatch`), from PulseAudio senders with a clock skew.
//!
//! Prints, for both modes in the same run:
//! - drift tracking at ±500 ppm (L16 PCM on the wire so that the codec does not mask the
//!   resampler): time to lock within 1 ms of the target, mean and worst latency error over
//!   the last 20 s, underruns, drift_ppm, the 1 kHz tone's frequency and THD+N at the sink's
//!   monitor;
//! - CPU: the PipeWire daemon's CPU time (utime+stime from /proc, per thread name) per
//!   stream-second with 8 Opus tunnels playing.
//!
//! Not part of CI: `cargo test --release -p opus-tunnel-tests --test ratematch -- --ignored
//! --nocapture --test-threads=1` (after building the modules; `OPUS_TUNNEL_PW_MODULE_DIR` /
//! `OPUS_TUNNEL_MODULE_DIR` point at them). `OPUS_TUNNEL_RATEMATCH_SECS` (default 45) is the
//! length of each drift case, `OPUS_TUNNEL_RATEMATCH_CPU_SECS` (default 30; 0: none) the CPU
//! window, `OPUS_TUNNEL_RATEMATCH_SKEWS` (default `500,-500,110`) the skews in ppm.

use opus_tunnel_tests::pipewire::{require_pw_modules, PipeWire};
use opus_tunnel_tests::prop_or_unknown;
use opus_tunnel_tests::Daemon;
use opus_tunnel_tests::{
    channel, dominant_frequency, free_port, play_loop, require_modules, serial, tone_loop,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const PW_RECEIVER: &str = "libpipewire-module-opus-protocol-tcp";
const PA_SENDER: &str = "module-tunnel-sink-opus";
const MODES: [&str; 2] = ["engine", "pipewire"];

fn env_secs(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn receiver(port: u16, mode: &str) -> PipeWire {
    PipeWire::builder()
        .name(&format!("rm-{mode}"))
        .module(
            PW_RECEIVER,
            &format!(
                "server.address = [ \"tcp:127.0.0.1:{port}\" ] auth.anonymous = true \
                 target.object = \"null\" opus.resampler = {mode}"
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_RECEIVER} ({mode}): {e:#}"))
}

fn num(p: &HashMap<String, String>, k: &str) -> f64 {
    p.get(k)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// Least-squares fit of `a·sin + b·cos + c` at `f`; returns the residual energy fraction.
fn residual(x: &[f64], f: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * f / rate;
    // Normal equations for [sin, cos, 1].
    let (mut ss, mut cc, mut sc, mut s1, mut c1, mut n) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut xs, mut xc, mut x1, mut xx) = (0.0, 0.0, 0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        ss += s * s;
        cc += c * c;
        sc += s * c;
        s1 += s;
        c1 += c;
        n += 1.0;
        xs += v * s;
        xc += v * c;
        x1 += v;
        xx += v * v;
    }
    // Solve the 3×3 system by Cramer's rule.
    let m = [[ss, sc, s1], [sc, cc, c1], [s1, c1, n]];
    let r = [xs, xc, x1];
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(m);
    let mut coef = [0.0; 3];
    for k in 0..3 {
        let mut mk = m;
        for row in 0..3 {
            mk[row][k] = r[row];
        }
        coef[k] = det(mk) / d;
    }
    // Residual energy = xx − coef·r (least squares).
    let fit = coef[0] * r[0] + coef[1] * r[1] + coef[2] * r[2];
    ((xx - fit) / xx).max(1e-30)
}

/// Least-squares frequency of `xs` near `f0` (searched ±`span` Hz, to ~`span`/10⁴).
fn fit_freq(xs: &[f64], f0: f64, span: f64, rate: f64) -> (f64, f64) {
    let mut best = (residual(xs, f0, rate), f0);
    let mut step = span / 10.0;
    for _ in 0..4 {
        let c = best.1;
        for k in -10..=10 {
            let f = c + step * f64::from(k);
            let r = residual(xs, f, rate);
            if r < best.0 {
                best = (r, f);
            }
        }
        step /= 10.0;
    }
    (best.1, best.0)
}

/// The tone's frequency over the whole of `x` (least squares, ~0.001 Hz), THD+N (dB) from
/// 100 ms blocks each fitted on its own (so that a slow wander of the pitch, which a single
/// fit over seconds counts as noise, does not count), the worst block's THD+N, and the spread
/// of the blocks' frequencies (ppm, max − min: frequency modulation by the ratio's steps).
fn tone_fit(x: &[f32], rate: u32) -> (f64, f64, f64, f64) {
    let xs: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let rate_f = f64::from(rate);
    let (f, _) = fit_freq(&xs, dominant_frequency(x, rate), 0.5, rate_f);
    let (mut res, mut tot, mut worst) = (0.0, 0.0, f64::NEG_INFINITY);
    let (mut fmin, mut fmax) = (f64::INFINITY, f64::NEG_INFINITY);
    for b in xs.chunks_exact(rate as usize / 10) {
        let (fb, r) = fit_freq(b, f, 0.5, rate_f);
        let e: f64 = b.iter().map(|v| v * v).sum();
        res += r * e;
        tot += e;
        worst = worst.max(10.0 * r.log10());
        fmin = fmin.min(fb);
        fmax = fmax.max(fb);
    }
    (
        f,
        10.0 * (res / tot).log10(),
        worst,
        (fmax - fmin) / f * 1e6,
    )
}

/// One drift case: a PulseAudio sender at `skew_ppm`, L16 PCM, 1 kHz / 1.5 kHz at -12 dBFS.
fn drift_case(mode: &str, skew_ppm: i32, secs: u64) -> String {
    let port = free_port();
    let pw = receiver(port, mode);
    let pa = Daemon::named("rm-sender");
    pa.load_module(
        PA_SENDER,
        &format!(
            "sink_name=tun server=tcp:127.0.0.1:{port} sink=null compression=none \
             clock_skew_ppm={skew_ppm}"
        ),
    )
    .unwrap_or_else(|e| panic!("load {PA_SENDER}: {e}\n{}", pa.log_tail(30)));
    let _player = play_loop(&pa, "tun", tone_loop(1000.0, 1500.0, -12.0));
    let start = Instant::now();
    let mut samples: Vec<(f64, HashMap<String, String>)> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        let streams = pw.nodes_where("application.name", "opus-tunnel");
        if let Some(p) = streams.into_iter().next() {
            samples.push((start.elapsed().as_secs_f64(), p));
        }
    }
    let mut rec = pw.recorder("null.monitor");
    let _ = rec.read(0.5);
    let audio = rec.read(3.0).expect("recording");
    let left = channel(&audio, 0, 2);
    let (freq, thdn, thdn_worst, fm_ppm) = tone_fit(&left[24_000..], 48_000);
    let last = samples.last().map(|s| s.1.clone()).unwrap_or_default();
    let err = |p: &HashMap<String, String>| {
        (num(p, "opus.tunnel.latency_usec") - num(p, "opus.tunnel.target_latency_usec")) / 1000.0
    };
    // Locked: from the first sample after which the error stays within 1 ms.
    let mut lock = None;
    for (i, (t, _)) in samples.iter().enumerate() {
        if samples[i..].iter().all(|(_, p)| err(p).abs() <= 1.0) {
            lock = Some(*t);
            break;
        }
    }
    let tail: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= secs as f64 - 20.0)
        .map(|(_, p)| err(p))
        .collect();
    let mean = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    let worst = tail.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    let trace: Vec<String> = samples
        .iter()
        .step_by(3)
        .map(|(t, p)| {
            format!(
                "{t:.0}s:{:+.2}ms/{}ppm",
                err(p),
                prop_or_unknown(p, "opus.tunnel.drift_ppm")
            )
        })
        .collect();
    println!("  trace {mode} {skew_ppm:+}: {}", trace.join(" "));
    format!(
        "{mode:8} skew {skew_ppm:+4} ppm: drift_ppm {:>7} | lock(≤1ms) at {} | last 20 s error mean {mean:+.2} ms worst {worst:.2} ms | target {} ms | underruns {} plc {} overruns {} | tone {freq:.3} Hz (expect {:.3}) | THD+N {thdn:.1} dB (worst 100 ms block {thdn_worst:.1} dB, block freq spread {fm_ppm:.0} ppm)",
        prop_or_unknown(&last, "opus.tunnel.drift_ppm"),
        lock.map_or("never".to_string(), |t| format!("{t:.0} s")),
        num(&last, "opus.tunnel.target_latency_usec") / 1000.0,
        prop_or_unknown(&last, "opus.tunnel.underruns"),
        prop_or_unknown(&last, "opus.tunnel.plc_frames"),
        prop_or_unknown(&last, "opus.tunnel.overruns"),
        1000.0 * (1.0 + f64::from(skew_ppm) * 1e-6),
    )
}

/// utime+stime (clock ticks) of each thread of `pid`, summed by thread name.
fn cpu_by_thread(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[l + 1..r].to_string();
        let f: Vec<&str> = stat[r + 2..].split_whitespace().collect();
        // Fields after the name: state is [0]; utime is field 14 of stat → [11], stime [12].
        let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(name).or_insert(0) += t;
    }
    out
}

/// 8 Opus tunnels (skew +200 ppm so that both modes resample) into one PipeWire receiver:
/// the daemon's CPU per stream-second over `secs`. Threads that ended in between are missed;
/// ours live as long as their tunnel.
fn cpu_case(mode: &str, tunnels: usize, secs: u64) -> String {
    let port = free_port();
    let pw = receiver(port, mode);
    let pa = Daemon::named("rm-cpu-sender");
    let mut players = Vec::new();
    for i in 0..tunnels {
        pa.load_module(
            PA_SENDER,
            &format!(
                "sink_name=tun{i} server=tcp:127.0.0.1:{port} sink=null compression=opus \
                 compression.bitrate=64000 clock_skew_ppm=200"
            ),
        )
        .unwrap_or_else(|e| panic!("load {PA_SENDER}: {e}\n{}", pa.log_tail(30)));
        players.push(play_loop(
            &pa,
            &format!("tun{i}"),
            tone_loop(1000.0, 1500.0, -12.0),
        ));
    }
    std::thread::sleep(Duration::from_secs(15));
    let streams = pw.nodes_where("application.name", "opus-tunnel");
    let playing = streams
        .iter()
        .filter(|p| p.get("opus.tunnel.state").map(String::as_str) == Some("streaming"))
        .count();
    let u0: f64 = streams
        .iter()
        .map(|p| num(p, "opus.tunnel.underruns"))
        .sum();
    let pid = pw.pid();
    let tck = 100.0; // sysconf(_SC_CLK_TCK) on Linux x86_64
    let c0 = cpu_by_thread(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = cpu_by_thread(pid);
    let wall = t0.elapsed().as_secs_f64();
    let streams = pw.nodes_where("application.name", "opus-tunnel");
    let u1: f64 = streams
        .iter()
        .map(|p| num(p, "opus.tunnel.underruns"))
        .sum();
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0.0;
    for (k, v1) in &c1 {
        let d = (*v1 - c0.get(k).copied().unwrap_or(0)) as f64 / tck;
        total += d;
        if d > 0.0 {
            *by.entry(k.clone()).or_insert(0.0) += d;
        }
    }
    let per = total * 1000.0 / (wall * tunnels as f64);
    let split: Vec<String> = by
        .iter()
        .map(|(k, v)| format!("{k}={:.2}", v * 1000.0 / (wall * tunnels as f64)))
        .collect();
    format!(
        "{mode:8} {tunnels} tunnels ({playing} streaming) over {wall:.0} s: daemon CPU {total:.2} s = {per:.2} ms per stream-second [{}] underruns during window {}",
        split.join(" "),
        u1 - u0
    )
}

#[test]
#[ignore = "spike measurement; run by hand"]
fn ratematch_compare() {
    let _g = serial();
    if !require_pw_modules("ratematch", &[PW_RECEIVER])
        || !require_modules("ratematch", &[PA_SENDER])
    {
        return;
    }
    let secs = env_secs("OPUS_TUNNEL_RATEMATCH_SECS", 45);
    let cpu_secs = env_secs("OPUS_TUNNEL_RATEMATCH_CPU_SECS", 30);
    let mut lines = Vec::new();
    // OPUS_TUNNEL_RATEMATCH_SKEWS="500,-500,110" (ppm) and OPUS_TUNNEL_RATEMATCH_CPU_SECS=0
    // (no CPU case) select the cases.
    let skews: Vec<i32> = std::env::var("OPUS_TUNNEL_RATEMATCH_SKEWS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![500, -500, 110]);
    for skew in skews {
        for mode in MODES {
            let l = drift_case(mode, skew, secs);
            println!("{l}");
            lines.push(l);
        }
    }
    for mode in MODES {
        if cpu_secs == 0 {
            break;
        }
        let l = cpu_case(mode, 8, cpu_secs);
        println!("{l}");
        lines.push(l);
    }
    println!("=== summary ===");
    for l in &lines {
        println!("{l}");
    }
}
