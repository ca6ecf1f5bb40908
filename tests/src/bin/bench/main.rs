//! Benchmarks side by side (issue 8): latency, bandwidth, CPU, scale and quality of our
//! tunnels against the stock `module-tunnel-sink-new` → `module-native-protocol-tcp` and
//! against raw libopus, every figure measured in the same run; prints the table and writes
//! `docs/benchmarks.md`.
//!
//!     scripts/bench.sh        (builds the modules and the floor example, then runs this)
//!     cargo run --release -p opus-tunnel-tests --bin bench
//!
//! Environment: `BENCH_ONLY=sessions,cpu,scale,quality` runs some sections only (the doc is
//! then not written unless `BENCH_WRITE=1`); `BENCH_LOWLAT_TARGET` (ms) overrides the
//! receiver's target of the low-latency setting; `BENCH_SCALE=1,8,32,64` the tunnel counts;
//! `BENCH_PYTHON` the Python with numpy, scipy and pesq (default: a venv in
//! target/bench-venv, created when missing).

mod latency;
mod rig;

use anyhow::{anyhow, bail, Context, Result};
use latency::{click_latencies, median_p95};
use opus_tunnel_tests::signal::music_loop;
use opus_tunnel_tests::{
    free_port, play, play_loop, require_modules, write_s16le, Daemon, Player, Recorder,
};
use rig::{cpu_secs, num, sink_inputs, sinks, Config, Kind, Measured, Rig, Window};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Default receiver target of the low-latency setting (ms). Tried with 5 ms frames and a 5 ms
/// sink block on this machine: 10 → 55 ms median end to end, 15 → 44 ms, 20 → 41 ms, all
/// without underruns; lower targets came out *higher*, so 20 it is.
const LOWLAT_TARGET_MS: u32 = 20;
/// Seconds measured with the tunnel up and nothing playing (wire rate, idle CPU).
const IDLE: Duration = Duration::from_secs(10);
/// Seconds of the music loop measured (wire rate, CPU).
const MUSIC: Duration = Duration::from_secs(12);
/// Seconds of an open stream playing zeros.
const SILENT: Duration = Duration::from_secs(8);
/// Clicks of the latency measurement.
const CLICKS: usize = 20;
/// Seconds measured with N tunnels up (scaling).
const SCALE: Duration = Duration::from_secs(10);
/// Bitrates of the quality table, bit/s.
const BITRATES: [u32; 4] = [16_000, 32_000, 64_000, 128_000];

fn root() -> PathBuf {
    let m = Path::new(env!("CARGO_MANIFEST_DIR"));
    m.parent().unwrap_or(m).to_path_buf()
}

fn sleep(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

fn log(msg: &str) {
    eprintln!("[bench {}] {msg}", chrono_now());
}

fn chrono_now() -> String {
    let out = Command::new("date").arg("+%H:%M:%S").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn music() -> Vec<i16> {
    // A chord with harmonics at -15 dBFS plus white noise at -30 dBFS, both channels.
    music_loop(4, -15.0, -30.0)
}

// ---------------------------------------------------------------------------------------
// Failures: a step whose daemon died (or that failed otherwise) is retried once; every
// failure is listed in the doc.

static FAILURES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    for attempt in 1..=3 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut f));
        let err = match r {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{e:#}"),
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        };
        let first = err.lines().next().unwrap_or("").to_string();
        log(&format!("{what}: attempt {attempt} failed: {first}"));
        FAILURES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{what} (attempt {attempt}): {first}"));
    }
    bail!("{what}: failed 3 times")
}

// ---------------------------------------------------------------------------------------
// Sessions: one per topology (latency, bandwidth, CPU at defaults)

#[derive(Default, Clone)]
struct Session {
    label: String,
    describe: String,
    idle: Option<(f64, f64, f64, u64)>, // secs, cpu s, cpu r, bytes
    music_kbps: f64,
    music_to_server_kbps: f64,
    silent_kbps: f64,
    idle_kbps: f64,
    idle_bytes: u64,
    /// CPU per stream-second (s/s) after subtracting idle: sender, receiver.
    cpu_net: (f64, f64),
    cpu_idle_rate: (f64, f64),
    lat: Vec<f64>,
    underruns: f64,
    target_latency_ms: f64,
    notes: Vec<String>,
}

fn opus_cpu_phases(rig: &Rig, s: &mut Session, with_idle_bytes: bool) -> Result<()> {
    // Idle: nothing plays. module-suspend-on-idle suspends the sinks after 5 s.
    sleep(6.0);
    let w = Window::open(rig);
    std::thread::sleep(IDLE);
    let m = w.close(rig);
    s.cpu_idle_rate = (m.cpu_sender / m.secs, m.cpu_receiver / m.secs);
    if with_idle_bytes {
        s.idle_bytes = m.bytes;
        s.idle_kbps = m.kbps();
    }
    s.idle = Some((m.secs, m.cpu_sender, m.cpu_receiver, m.bytes));
    // Music.
    let u0 = rig.underruns();
    let player = play_loop(&rig.sender, "tun", music());
    sleep(3.0);
    let w = Window::open(rig);
    let to_server0 = rig.proxy.bytes_to_server();
    std::thread::sleep(MUSIC);
    let m: Measured = w.close(rig);
    let to_server = rig.proxy.bytes_to_server() - to_server0;
    drop(player);
    s.music_kbps = m.kbps();
    s.music_to_server_kbps = to_server as f64 * 8.0 / m.secs / 1000.0;
    s.cpu_net = (
        (m.cpu_sender - s.cpu_idle_rate.0 * m.secs) / m.secs,
        (m.cpu_receiver - s.cpu_idle_rate.1 * m.secs) / m.secs,
    );
    sleep(1.2);
    s.underruns += (rig.underruns() - u0).max(0.0);
    Ok(())
}

fn run_session(cfg: &Config) -> Result<Session> {
    log(&format!("session {}: {}", cfg.label, cfg.describe()));
    let rig = Rig::start(cfg)?;
    let mut s = Session {
        label: cfg.label.clone(),
        describe: cfg.describe(),
        ..Default::default()
    };
    opus_cpu_phases(&rig, &mut s, true)?;
    // A stream open but silent (an application that keeps its stream and plays zeros).
    let player = play_loop(&rig.sender, "tun", vec![0i16; 48_000 * 2]);
    sleep(2.0);
    let w = Window::open(&rig);
    std::thread::sleep(SILENT);
    s.silent_kbps = w.close(&rig).kbps();
    drop(player);
    // Clicks.
    let u0 = rig.underruns();
    s.lat = click_latencies(&rig.sender, "tun", &rig.receiver, CLICKS)?;
    sleep(1.2);
    s.underruns += (rig.underruns() - u0).max(0.0);
    if cfg.kind == Kind::Ours {
        s.target_latency_ms = sink_inputs(&rig.receiver)
            .iter()
            .filter(|p| p.get("application.name").map(String::as_str) == Some("opus-tunnel"))
            .map(|p| num(p, "opus.tunnel.target_latency_usec") / 1000.0)
            .fold(f64::NAN, f64::max);
    }
    if s.lat.len() < CLICKS {
        s.notes
            .push(format!("{} of {CLICKS} clicks found", s.lat.len()));
    }
    let (med, p95) = median_p95(&s.lat);
    log(&format!(
        "  latency median {med:.1} ms p95 {p95:.1} ms; music {:.1} kbit/s, idle {} B, silent stream {:.1} kbit/s; CPU/stream-s sender {:.4} receiver {:.4}; underruns {}",
        s.music_kbps, s.idle_bytes, s.silent_kbps, s.cpu_net.0, s.cpu_net.1, s.underruns
    ));
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Floor: raw libopus in-process

struct Floor {
    stream_secs: f64,
    enc: f64,
    dec: f64,
}

impl Floor {
    fn per_sec(&self) -> f64 {
        (self.enc + self.dec) / self.stream_secs
    }
}

fn floor_bin() -> Result<PathBuf> {
    let st = Command::new("cargo")
        .current_dir(root())
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "opus-tunnel-core",
            "--example",
            "bench_floor",
        ])
        .status()
        .context("cargo build of the bench_floor example")?;
    if !st.success() {
        bail!("cargo build --example bench_floor failed");
    }
    Ok(root().join("target/release/examples/bench_floor"))
}

fn run_floor(bin: &Path, input: &Path, args: &[String]) -> Result<Floor> {
    let out = Command::new(bin).arg(input).args(args).output()?;
    if !out.status.success() {
        bail!(
            "bench_floor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let get = |k: &str| -> f64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Floor {
        stream_secs: get("stream_secs"),
        enc: get("enc_cpu_s"),
        dec: get("dec_cpu_s"),
    })
}

// ---------------------------------------------------------------------------------------
// Scale

struct ScaleRow {
    n: usize,
    /// Open file descriptors of (sender, receiver) daemons while the N streams play.
    fds: (usize, usize),
    cpu_sender_pct: f64,
    cpu_receiver_pct: f64,
    cpu_pacat_pct: f64,
    streams: usize,
    streams_with_underruns: usize,
    underruns: f64,
    plc: f64,
    sender_drops: f64,
}

fn run_scale(n: usize) -> Result<ScaleRow> {
    log(&format!("scale: {n} tunnels"));
    // PulseAudio's daemon.conf default rlimit-nofile=256 is too few for one daemon holding
    // dozens of tunnels and their clients ("accept(): Too many open files" at 32): both
    // daemons of this section read a daemon.conf (PULSE_CONFIG, inherited) that raises it.
    let conf = std::env::temp_dir().join(format!("ot-bench-daemon-{}.conf", std::process::id()));
    std::fs::write(&conf, "rlimit-nofile = 8192\n")?;
    std::env::set_var("PULSE_CONFIG", &conf);
    let port = free_port();
    let receiver = Daemon::builder()
        .name("receiver")
        .line(format!(
            "load-module {} port={port} listen=127.0.0.1 auth-anonymous=1 sink=null max_connections=64",
            rig::RECEIVER
        ))
        .start()?;
    let sender = Daemon::builder().name("sender").start()?;
    for k in 0..n {
        sender
            .load_module(
                rig::SENDER,
                &format!("sink_name=t{k} server=tcp:127.0.0.1:{port} sink=null compression.opus.complexity=5"),
            )
            .map_err(|e| anyhow!("load tunnel t{k}: {e}"))?;
    }
    let m = music();
    let players: Vec<Player> = (0..n)
        .map(|k| play_loop(&sender, &format!("t{k}"), m.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.sink_input_count() < n && Instant::now() < deadline {
        sleep(0.25);
    }
    let streams = receiver.sink_input_count();
    sleep(3.0);
    let snap = |d: &Daemon| -> Vec<(String, f64, f64)> {
        sink_inputs(d)
            .iter()
            .filter(|p| p.get("application.name").map(String::as_str) == Some("opus-tunnel"))
            .map(|p| {
                (
                    p.get("media.name").cloned().unwrap_or_default(),
                    num(p, "opus.tunnel.underruns"),
                    num(p, "opus.tunnel.plc_frames"),
                )
            })
            .collect()
    };
    let drops = |d: &Daemon| -> f64 {
        sinks(d)
            .iter()
            .map(|p| {
                let a = num(p, "opus.tunnel.dropped_frames");
                let b = num(p, "opus.tunnel.overruns");
                (if a.is_finite() { a } else { 0.0 }) + (if b.is_finite() { b } else { 0.0 })
            })
            .sum()
    };
    std::env::remove_var("PULSE_CONFIG");
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let fds_now = (fds(sender.pid()), fds(receiver.pid()));
    let before = snap(&receiver);
    let d0 = drops(&sender);
    let pacat_cpu = |ps: &[Player]| -> f64 { ps.iter().map(|p| cpu_secs(p.pid())).sum() };
    let (cs, cr, cp) = (
        cpu_secs(sender.pid()),
        cpu_secs(receiver.pid()),
        pacat_cpu(&players),
    );
    let t = Instant::now();
    std::thread::sleep(SCALE);
    let secs = t.elapsed().as_secs_f64();
    let (cs1, cr1, cp1) = (
        cpu_secs(sender.pid()),
        cpu_secs(receiver.pid()),
        pacat_cpu(&players),
    );
    sleep(1.5); // properties are refreshed every second
    let after = snap(&receiver);
    let d1 = drops(&sender);
    let mut with = 0;
    let mut under = 0.0;
    let mut plc = 0.0;
    for (name, u, p) in &after {
        if let Some((_, u0, p0)) = before.iter().find(|(n0, _, _)| n0 == name) {
            let du = u - u0;
            if du > 0.0 || !du.is_finite() {
                with += 1;
            }
            if du.is_finite() {
                under += du;
            }
            if (p - p0).is_finite() {
                plc += p - p0;
            }
        } else {
            with += 1;
        }
    }
    drop(players);
    let row = ScaleRow {
        n,
        fds: fds_now,
        cpu_sender_pct: (cs1 - cs) / secs * 100.0,
        cpu_receiver_pct: (cr1 - cr) / secs * 100.0,
        cpu_pacat_pct: (cp1 - cp) / secs * 100.0,
        streams,
        streams_with_underruns: with,
        underruns: under,
        plc,
        sender_drops: d1 - d0,
    };
    log(&format!(
        "  {secs:.1} s: {} streams; CPU sender {:.1} % receiver {:.1} % (pacat clients {:.1} %); {} streams with underruns ({} underruns, {} PLC frames); sender drops {}",
        row.streams, row.cpu_sender_pct, row.cpu_receiver_pct, row.cpu_pacat_pct, row.streams_with_underruns, row.underruns, row.plc, row.sender_drops
    ));
    Ok(row)
}

// ---------------------------------------------------------------------------------------
// Quality

struct Python {
    exe: PathBuf,
}

impl Python {
    fn setup() -> Result<Python> {
        if Command::new("espeak-ng").arg("--version").output().is_err() {
            log("espeak-ng missing: apt-get install -y espeak-ng");
            let st = Command::new("apt-get")
                .args(["install", "-y", "-q", "espeak-ng"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            if !matches!(st, Ok(s) if s.success()) {
                bail!("espeak-ng is not installed and apt-get install espeak-ng failed");
            }
        }
        let exe = match std::env::var_os("BENCH_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => {
                let venv = root().join("target/bench-venv");
                let py = venv.join("bin/python");
                if !py.is_file() {
                    log("creating target/bench-venv (numpy, scipy, pesq from PyPI)");
                    let ok = Command::new("python3")
                        .args(["-m", "venv"])
                        .arg(&venv)
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                    if !ok {
                        bail!("python3 -m venv failed (install python3-venv)");
                    }
                }
                py
            }
        };
        let check = Command::new(&exe)
            .args(["-c", "import numpy, scipy, pesq"])
            .output();
        if !matches!(check, Ok(ref o) if o.status.success()) {
            let ok = Command::new(&exe)
                .args(["-m", "pip", "install", "-q", "numpy", "scipy", "pesq"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                bail!("pip install numpy scipy pesq failed");
            }
        }
        Ok(Python { exe })
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.exe)
            .arg(root().join("bench/quality.py"))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "quality.py {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn score(&self, reference: &Path, degraded: &Path) -> Result<Score> {
        let j = self.run(&[
            "score",
            &reference.display().to_string(),
            &degraded.display().to_string(),
        ])?;
        Ok(Score {
            pesq: json_num(&j, "pesq_wb"),
            snr: json_num(&j, "snr_db"),
            exact: json_num(&j, "bit_exact_fraction"),
            dropouts: json_num(&j, "dropouts"),
            lag: json_num(&j, "lag"),
            raw: j,
        })
    }
}

fn json_num(j: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\": ");
    j.find(&pat)
        .map(|i| &j[i + pat.len()..])
        .and_then(|r| {
            r.split([',', '}'])
                .next()
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

#[derive(Clone, Debug)]
struct Score {
    pesq: f64,
    snr: f64,
    exact: f64,
    dropouts: f64,
    lag: f64,
    raw: String,
}

struct QualityRow {
    label: String,
    tunnel: Option<Score>,
    tunnel_underruns: f64,
    raw: Option<Score>,
    note: String,
}

impl QualityRow {
    /// A row of a tunnel's score (and underruns during it), with the raw codec's if any.
    fn tunnel(label: impl Into<String>, (t, u): (Score, f64), raw: Option<Score>) -> QualityRow {
        QualityRow {
            label: label.into(),
            tunnel: Some(t),
            tunnel_underruns: u,
            raw,
            note: String::new(),
        }
    }
}

fn tunnel_speech(
    cfg: &Config,
    speech: &Path,
    secs: f64,
    py: &Python,
    work: &Path,
) -> Result<(Score, f64)> {
    log(&format!("quality: {}", cfg.describe()));
    let rig = Rig::start(cfg)?;
    let u0 = rig.underruns();
    let mut rec = Recorder::start(&rig.receiver, "null.monitor");
    rec.discard();
    let mut p = play(&rig.sender, "tun", speech);
    let got = rec.read(secs + 1.5)?;
    p.wait(Duration::from_secs(3));
    sleep(1.2);
    let under = (rig.underruns() - u0).max(0.0);
    let file = work.join(format!(
        "deg-{}.raw",
        cfg.label.replace(|c: char| !c.is_alphanumeric(), "_")
    ));
    write_s16le(&file, &got)?;
    let s = py.score(speech, &file)?;
    log(&format!("  {}", s.raw));
    Ok((s, under))
}

// ---------------------------------------------------------------------------------------

fn f1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}
fn f2(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "–".into()
    }
}

fn main() {
    if !require_modules("bench", &[rig::SENDER, rig::RECEIVER]) {
        eprintln!("build the modules first: scripts/build-modules.sh");
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let t_start = Instant::now();
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let want = |s: &str| match &only {
        None => true,
        Some(o) => o.iter().any(|x| x == s),
    };
    let lowlat_target: u32 = std::env::var("BENCH_LOWLAT_TARGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LOWLAT_TARGET_MS);
    let scale_ns: Vec<usize> = std::env::var("BENCH_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32, 64]);
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let work = std::env::temp_dir().join(format!("ot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let floor_exe = floor_bin()?;

    let lowlat_sender = "compression.frame_size=5 latency_msec=5";
    let lowlat_receiver = format!("target_latency_msec={lowlat_target}");
    let configs = [
        Config::ours("ours opus, defaults", "", ""),
        Config::ours("ours opus, low latency", lowlat_sender, &lowlat_receiver),
        Config::ours("ours compression=none", "compression=none", ""),
        Config::stock("stock tunnel"),
    ];

    // 1. Sessions.
    let mut sessions: Vec<Session> = Vec::new();
    if want("sessions") {
        let pick: Option<Vec<usize>> = std::env::var("BENCH_SESSIONS")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
        for (i, c) in configs.iter().enumerate() {
            if pick.as_ref().is_some_and(|p| !p.contains(&i)) {
                continue;
            }
            sessions.push(retry(&format!("session {}", c.label), || run_session(c))?);
        }
    }

    // 2. CPU at complexity 0 and 5 (10 is the default session), the daemon plumbing alone,
    //    and the raw libopus floor on the same audio.
    let music_file = work.join("music.raw");
    write_s16le(&music_file, &music())?;
    let mut cpu_rows: Vec<(u8, Session, Floor)> = Vec::new();
    let mut plumbing: Option<(f64, f64)> = None;
    if want("cpu") {
        for c in [0u8, 5, 10] {
            let s = if c == 10 {
                match sessions.first() {
                    Some(s) => s.clone(),
                    None => {
                        let cfg = Config::ours("complexity 10", "", "");
                        let rig = Rig::start(&cfg)?;
                        let mut s = Session::default();
                        opus_cpu_phases(&rig, &mut s, false)?;
                        s
                    }
                }
            } else {
                let cfg = Config::ours(
                    &format!("complexity {c}"),
                    &format!("compression.opus.complexity={c}"),
                    "",
                );
                log(&format!("cpu: {}", cfg.describe()));
                let s = retry(&format!("cpu complexity {c}"), || {
                    let rig = Rig::start(&cfg)?;
                    let mut s = Session::default();
                    opus_cpu_phases(&rig, &mut s, false)?;
                    Ok(s)
                })?;
                log(&format!(
                    "  CPU/stream-s sender {:.4} receiver {:.4} (idle {:.4} {:.4})",
                    s.cpu_net.0, s.cpu_net.1, s.cpu_idle_rate.0, s.cpu_idle_rate.1
                ));
                s
            };
            // 3 passes over the 4 s loop's file = 12 s of audio, like the daemons' window.
            let fl = run_floor(
                &floor_exe,
                &music_file,
                &[format!("complexity={c}"), "repeat=3".into()],
            )?;
            log(&format!(
                "  floor complexity {c}: enc {:.4} dec {:.4} s per {:.0} s",
                fl.enc, fl.dec, fl.stream_secs
            ));
            cpu_rows.push((c, s, fl));
        }
        // Plumbing: the same pacat into the sender daemon's own null sink, no tunnel.
        log("cpu: plumbing reference (pacat → null sink, one daemon)");
        let d = Daemon::builder().name("plumbing").start()?;
        sleep(3.0);
        let c0 = cpu_secs(d.pid());
        let t = Instant::now();
        std::thread::sleep(IDLE);
        let idle_rate = (cpu_secs(d.pid()) - c0) / t.elapsed().as_secs_f64();
        let p = play_loop(&d, "null", music());
        sleep(3.0);
        let c0 = cpu_secs(d.pid());
        let t = Instant::now();
        std::thread::sleep(MUSIC);
        let secs = t.elapsed().as_secs_f64();
        let net = (cpu_secs(d.pid()) - c0 - idle_rate * secs) / secs;
        drop(p);
        plumbing = Some((net, idle_rate));
        log(&format!("  plumbing {net:.4} s/s (idle {idle_rate:.4})"));
    }

    // 3. Scale.
    let mut scale: Vec<ScaleRow> = Vec::new();
    if want("scale") {
        for &n in &scale_ns {
            match retry(&format!("scale {n}"), || run_scale(n)) {
                Ok(r) => scale.push(r),
                Err(e) => log(&format!("{e:#}")),
            }
        }
    }

    // 4. Quality.
    let mut quality: Vec<QualityRow> = Vec::new();
    let mut quality_err: Option<String> = None;
    let mut raw_extra: Vec<(String, Score)> = Vec::new();
    if want("quality") {
        match Python::setup() {
            Err(e) => quality_err = Some(format!("{e:#}")),
            Ok(py) => {
                let speech = work.join("speech.raw");
                let secs: f64 = py
                    .run(&["speech", &speech.display().to_string()])?
                    .parse()
                    .map_err(|e| anyhow!("speech length: {e}"))?;
                let raw_score = |args: &[String], tag: &str| -> Result<Score> {
                    let out = work.join(format!("raw-{tag}.raw"));
                    let mut a = args.to_vec();
                    a.push(format!("out={}", out.display()));
                    run_floor(&floor_exe, &speech, &a)?;
                    py.score(&speech, &out)
                };
                let tunnel_score = |cfg: &Config| {
                    retry(&format!("quality {}", cfg.label), || {
                        tunnel_speech(cfg, &speech, secs, &py, &work)
                    })
                };
                for b in BITRATES {
                    let cfg = Config::ours(
                        &format!("opus {}k", b / 1000),
                        &format!("compression.bitrate={b}"),
                        "",
                    );
                    let tu = tunnel_score(&cfg)?;
                    let r = raw_score(&[format!("bitrate={b}")], &format!("{b}"))?;
                    log(&format!("  raw libopus {}k: {}", b / 1000, r.raw));
                    quality.push(QualityRow::tunnel(
                        format!("opus {} kbit/s, 20 ms", b / 1000),
                        tu,
                        Some(r),
                    ));
                }
                let cfg = Config::ours("opus lowlat", lowlat_sender, &lowlat_receiver);
                let tu = tunnel_score(&cfg)?;
                let r = raw_score(&["bitrate=64000".into(), "frame_ms=5".into()], "64k-5ms")?;
                quality.push(QualityRow::tunnel(
                    "opus 64 kbit/s, 5 ms (low-latency setting)",
                    tu,
                    Some(r),
                ));
                let cfg = Config::ours("none", "compression=none", "");
                quality.push(QualityRow::tunnel(
                    "ours compression=none (PCM)",
                    tunnel_score(&cfg)?,
                    None,
                ));
                let cfg = Config::stock("stock");
                let (t, _) = tunnel_score(&cfg)?;
                // The stock tunnel has no underrun counter.
                quality.push(QualityRow::tunnel(
                    "stock tunnel (PCM)",
                    (t, f64::NAN),
                    None,
                ));
                for (tag, args) in [
                    ("64k, 10 ms", vec!["bitrate=64000", "frame_ms=10"]),
                    (
                        "64k, 20 ms, complexity 5",
                        vec!["bitrate=64000", "complexity=5"],
                    ),
                    (
                        "64k, 20 ms, complexity 0",
                        vec!["bitrate=64000", "complexity=0"],
                    ),
                    ("32k, 10 ms", vec!["bitrate=32000", "frame_ms=10"]),
                    ("48k, 20 ms", vec!["bitrate=48000"]),
                    ("96k, 20 ms", vec!["bitrate=96000"]),
                ] {
                    let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
                    let s = raw_score(&a, &tag.replace(|c: char| !c.is_alphanumeric(), "_"))?;
                    raw_extra.push((tag.to_string(), s));
                }
            }
        }
    }

    let total = t_start.elapsed().as_secs_f64();
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let doc = report(&Report {
        sessions: &sessions,
        cpu_rows: &cpu_rows,
        plumbing,
        scale: &scale,
        quality: &quality,
        quality_err,
        raw_extra: &raw_extra,
        lowlat_target,
        total,
        load_start,
        load_end,
    });
    println!("{doc}");
    if only.is_none() || std::env::var_os("BENCH_WRITE").is_some() {
        let path = root().join("docs/benchmarks.md");
        std::fs::create_dir_all(root().join("docs"))?;
        std::fs::write(&path, &doc)?;
        log(&format!("wrote {}", path.display()));
    }
    let _ = std::fs::remove_dir_all(&work);
    log(&format!("bench took {total:.0} s"));
    Ok(())
}

struct Report<'a> {
    sessions: &'a [Session],
    cpu_rows: &'a [(u8, Session, Floor)],
    plumbing: Option<(f64, f64)>,
    scale: &'a [ScaleRow],
    quality: &'a [QualityRow],
    quality_err: Option<String>,
    raw_extra: &'a [(String, Score)],
    lowlat_target: u32,
    total: f64,
    load_start: String,
    load_end: String,
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("?")
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!(
        "- machine: {nproc} CPUs (`nproc`), {model}, kernel {kernel}\n- {}; libopus {}\n- date: {}\n",
        sh("pulseaudio", &["--version"]),
        sh("pkg-config", &["--modversion", "opus"]),
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

fn report(r: &Report) -> String {
    let (idle_s, music_s, silent_s, scale_s) = (
        IDLE.as_secs(),
        MUSIC.as_secs(),
        SILENT.as_secs(),
        SCALE.as_secs(),
    );
    let mut d = String::new();
    let _ = writeln!(d, "# Benchmarks\n");
    let _ = writeln!(
        d,
        "Written by `scripts/bench.sh` (`cargo run --release -p opus-tunnel-tests --bin bench`); every figure below was measured in the same run, side by side with its anchor (the stock `module-tunnel-sink-new` → `module-native-protocol-tcp` tunnel, and raw libopus in-process). Issue 8.\n"
    );
    let _ = writeln!(d, "{}", machine());
    let _ = writeln!(
        d,
        "- the run took {:.0} s; load average at start `{}`, at the end `{}` (other work shares this machine: latency figures are wall-clock and feel it, CPU figures are CPU time and do not)\n",
        r.total,
        r.load_start.trim(),
        r.load_end.trim()
    );
    let _ = writeln!(d, "Topology for every row: two private `pulseaudio` daemons on loopback (the harness of `tests/`), each with a 48 kHz stereo `module-null-sink`; the sender's tunnel sink `tun` connects to the receiver through a byte-counting TCP proxy; the receiver plays on its null sink. The stock topology's daemons also load `module-suspend-on-idle`, as a stock `default.pa` does (without it the stock tunnel streams silence at full PCM rate while idle); ours do not, because with it our receiver crashed (segfault) when the tunnel's connection ended — see *Problems found* below.\n");

    let stock = r.sessions.iter().find(|s| s.label.starts_with("stock"));
    let dflt = r.sessions.first();

    // Latency.
    if !r.sessions.is_empty() {
        let _ = writeln!(d, "## End-to-end latency\n");
        let _ = writeln!(d, "Method (the same for all four): {CLICKS} clicks (10 ms of 2 kHz at -6 dBFS, 0.75 s apart) written in 10 ms blocks at wall-clock pace into `pacat --latency-msec=10` on the sender's tunnel sink; `parec --latency-msec=10` records the receiver's `null.monitor`; latency = wall time from writing the click into pacat to the wall time its first sample above -18 dBFS came out of parec (so it includes pacat's and parec's own ~10 ms buffers and the null sinks' blocks, equally for every row).\n");
        let _ = writeln!(d, "| setting | loaded as | median ms | p95 ms | clicks found | receiver underruns | ratio median / stock |");
        let _ = writeln!(d, "|---|---|---:|---:|---:|---:|---:|");
        let smed = stock.map(|s| median_p95(&s.lat).0).unwrap_or(f64::NAN);
        for s in r.sessions {
            let (m, p) = median_p95(&s.lat);
            let _ = writeln!(
                d,
                "| {} | {} | {} | {} | {}/{} | {} | {} |",
                s.label,
                s.describe,
                f1(m),
                f1(p),
                s.lat.len(),
                CLICKS,
                if s.label.starts_with("stock") {
                    "n/a".into()
                } else {
                    format!("{:.0}", s.underruns)
                },
                f2(m / smed)
            );
        }
        let _ = writeln!(d, "\nThe low-latency setting: sender `compression.frame_size=5 latency_msec=5`, receiver `target_latency_msec={}`. Underruns are counted on the receiver's stream (`opus.tunnel.underruns`) over the music and click phases.\n", r.lowlat_target);

        let _ = writeln!(d, "## Bandwidth on the wire\n");
        let _ = writeln!(d, "TCP payload bytes through the proxy, both directions (TCP/IP headers not counted). Playing: the music-like loop (`music_loop`: chord with harmonics at -15 dBFS + white noise at -30 dBFS, stereo) for {music_s} s after 3 s of warm-up. Idle: no stream at all for {idle_s} s, starting 6 s after the tunnel came up (after suspend-on-idle's 5 s). Silent stream: an application keeps a stream open and plays zeros, {silent_s} s.\n");
        let _ = writeln!(d, "| setting | playing kbit/s | of which sender→receiver | ratio playing ours/stock | idle 10 s, bytes | silent stream kbit/s |");
        let _ = writeln!(d, "|---|---:|---:|---:|---:|---:|");
        let sk = stock.map(|s| s.music_kbps).unwrap_or(f64::NAN);
        for s in r.sessions {
            let _ = writeln!(
                d,
                "| {} | {} | {} | {} | {} | {} |",
                s.label,
                f1(s.music_kbps),
                f1(s.music_to_server_kbps),
                if s.label.starts_with("stock") {
                    "1".into()
                } else {
                    format!("{:.3} (1/{:.1})", s.music_kbps / sk, sk / s.music_kbps)
                },
                s.idle_bytes,
                f1(s.silent_kbps)
            );
        }
        let _ = writeln!(d);
    }

    // CPU.
    if !r.cpu_rows.is_empty() {
        let _ = writeln!(d, "## CPU per stream-second\n");
        let _ = writeln!(d, "Daemon CPU time (utime + stime from `/proc/PID/stat`, all threads) over {music_s} s of the music loop through one tunnel (defaults but for the complexity: 64 kbit/s, 20 ms, stereo 48 kHz), **minus each daemon's idle CPU** measured the same way over {idle_s} s with the tunnel up and nothing playing, divided by the stream seconds. Floor: raw libopus (`codec::Encoder`/`codec::Decoder`, i.e. audiopus) encoding + decoding the same audio in-process (`crates/core/examples/bench_floor.rs`, thread CPU time from schedstat). Ratio = (sender + receiver) / floor, target < 1.25.\n");
        let _ = writeln!(d, "| complexity | sender ms/s | receiver ms/s | sender + receiver ms/s | floor enc ms/s | floor dec ms/s | floor enc+dec ms/s | ratio to floor | sender / enc floor | receiver / dec floor |");
        let _ = writeln!(d, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (c, s, fl) in r.cpu_rows {
            let tot = s.cpu_net.0 + s.cpu_net.1;
            let _ = writeln!(
                d,
                "| {c} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | **{:.2}×** | {:.2}× | {:.2}× |",
                s.cpu_net.0 * 1e3,
                s.cpu_net.1 * 1e3,
                tot * 1e3,
                fl.enc / fl.stream_secs * 1e3,
                fl.dec / fl.stream_secs * 1e3,
                fl.per_sec() * 1e3,
                tot / fl.per_sec(),
                s.cpu_net.0 / (fl.enc / fl.stream_secs),
                s.cpu_net.1 / (fl.dec / fl.stream_secs),
            );
        }
        let _ = writeln!(
            d,
            "\nFor context, the same measurement of the other sessions (no codec floor applies):\n"
        );
        let _ = writeln!(d, "| setting | sender ms/s | receiver ms/s | total ms/s | idle sender ms/s | idle receiver ms/s |");
        let _ = writeln!(d, "|---|---:|---:|---:|---:|---:|");
        for s in r.sessions {
            let _ = writeln!(
                d,
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                s.label,
                s.cpu_net.0 * 1e3,
                s.cpu_net.1 * 1e3,
                (s.cpu_net.0 + s.cpu_net.1) * 1e3,
                s.cpu_idle_rate.0 * 1e3,
                s.cpu_idle_rate.1 * 1e3
            );
        }
        if let Some((p, idle)) = r.plumbing {
            let _ = writeln!(d, "| plumbing only: the same pacat into one daemon's own null sink, no tunnel | {:.2} | – | {:.2} | {:.2} | – |", p * 1e3, p * 1e3, idle * 1e3);
        }
        let _ = writeln!(d, "\nms/s = milliseconds of CPU per second of stereo 48 kHz audio (1 ms/s = 0.1 % of one core). CPU time is counted in ticks of 10 ms, so each daemon figure is ±{:.2} ms/s.\n", 20.0 / MUSIC.as_secs_f64());
    }

    // Scale.
    if !r.scale.is_empty() {
        let _ = writeln!(d, "## Scale: N tunnels through one receiver\n");
        let _ = writeln!(d, "One sender daemon with N `module-tunnel-sink-opus` sinks (`compression.opus.complexity=5`, otherwise defaults: stereo 48 kHz, 64 kbit/s, 20 ms), each fed the music loop by its own `pacat`; one receiver (`module-opus-protocol-tcp`, defaults, `max_connections=64`) plays all N on its null sink. Measured over {scale_s} s after every stream was up and 3 s of settling. CPU % is of one core (the machine has 2). Clean = no receiver stream's `opus.tunnel.underruns` changed (`pactl list sink-inputs`). Both daemons run with `rlimit-nofile = 8192` (a daemon.conf given by `PULSE_CONFIG`): at PulseAudio's default `rlimit-nofile = 256` the sender daemon with 32 tunnels and their 32 pacat clients ran out of descriptors (`accept(): Too many open files`) and the run failed (see the fds column for what N tunnels hold).\n");
        let _ = writeln!(d, "| tunnels | streams on receiver | sender CPU % | receiver CPU % | both daemons CPU % | per tunnel % | pacat clients CPU % | streams with underruns | underruns | PLC frames | sender drops/overruns | fds sender / receiver | clean |");
        let _ = writeln!(
            d,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for s in r.scale {
            let both = s.cpu_sender_pct + s.cpu_receiver_pct;
            let clean = s.streams == s.n && s.streams_with_underruns == 0 && s.sender_drops == 0.0;
            let _ = writeln!(
                d,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {} | {:.0} | {:.0} | {:.0} | {} / {} | {} |",
                s.n,
                s.streams,
                s.cpu_sender_pct,
                s.cpu_receiver_pct,
                both,
                both / s.n as f64,
                s.cpu_pacat_pct,
                s.streams_with_underruns,
                s.underruns,
                s.plc,
                s.sender_drops,
                s.fds.0,
                s.fds.1,
                if clean { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(d);
    }

    // Quality.
    if !r.quality.is_empty() || r.quality_err.is_some() {
        let _ = writeln!(d, "## Quality\n");
        if let Some(e) = &r.quality_err {
            let _ = writeln!(d, "Not measured: {e}\n");
        }
        let _ = writeln!(d, "Speech: five Harvard sentences spoken by `espeak-ng` (en-us male and en-us+f3 female, alternating), resampled to 48 kHz, the same on both channels, active level about -26 dBov, 0.5 s of silence at both ends. Played once with `pacat` into the tunnel sink, recorded from the receiver's `null.monitor`, aligned to the original by cross-correlation (mono downmix), then PESQ wideband (P.862.2, PyPI `pesq`) on the mono downmix resampled to 16 kHz, and SNR at 48 kHz. Raw libopus: the same file encoded + decoded in-process at the same bitrate and frame size (stereo, complexity 10). Dropouts: 10 ms blocks where the original is active and the received audio is 20 dB or more below it (`bench/quality.py`).\n");
        let _ = writeln!(d, "| setting | tunnel PESQ-WB | raw libopus PESQ-WB | tunnel − raw | tunnel SNR dB | bit-exact samples | dropouts | receiver underruns |");
        let _ = writeln!(d, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for q in r.quality {
            let t = q.tunnel.as_ref();
            let tp = t.map(|s| s.pesq).unwrap_or(f64::NAN);
            let rp = q.raw.as_ref().map(|s| s.pesq).unwrap_or(f64::NAN);
            let _ = writeln!(
                d,
                "| {} | {} | {} | {} | {} | {} | {} | {} |{}",
                q.label,
                f2(tp),
                f2(rp),
                if rp.is_finite() {
                    format!("{:+.2}", tp - rp)
                } else {
                    "–".into()
                },
                f1(t.map(|s| s.snr).unwrap_or(f64::NAN)),
                t.map(|s| format!("{:.1} %", s.exact * 100.0))
                    .unwrap_or_default(),
                t.map(|s| format!("{:.0}", s.dropouts)).unwrap_or_default(),
                if q.tunnel_underruns.is_finite() {
                    format!("{:.0}", q.tunnel_underruns)
                } else {
                    "n/a".into()
                },
                q.note
            );
        }
        if !r.raw_extra.is_empty() {
            let _ = writeln!(d, "\nRaw libopus alone, other settings (same speech):\n");
            let _ = writeln!(d, "| raw libopus | PESQ-WB | SNR dB |");
            let _ = writeln!(d, "|---|---:|---:|");
            for (tag, s) in r.raw_extra {
                let _ = writeln!(d, "| {tag} | {} | {} |", f2(s.pesq), f1(s.snr));
            }
        }
        let _ = writeln!(d, "\nNote on SNR and bit-exactness: our receiver plays every stream, PCM included, through the drift-correcting resampler (rubato), so the received waveform is shifted by a fraction of a sample that the integer cross-correlation cannot undo; the SNR column is therefore not a codec figure for our rows, and `compression=none` is **not bit-exact** (the stock PCM tunnel, which does not resample here, is near-exact). PESQ, which aligns on its own, is unaffected.");
        let _ = writeln!(
            d,
            "\nAlignment lags (samples at 48 kHz) were: {}.\n",
            r.quality
                .iter()
                .filter_map(|q| q
                    .tunnel
                    .as_ref()
                    .map(|s| format!("{} {:.0}", q.label, s.lag)))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    // Failures.
    let fails = FAILURES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _ = writeln!(d, "## Problems found during the run\n");
    if fails.is_empty() {
        let _ = writeln!(d, "No step failed in this run.\n");
    } else {
        let _ = writeln!(d, "Steps that failed and were retried (a daemon that died shows up as `Connection refused` from pactl):\n");
        for f in &fails {
            let _ = writeln!(d, "- {}", f.replace('\n', " "));
        }
        let _ = writeln!(d);
    }

    // Headlines.
    let _ = writeln!(d, "## Headline ratios\n");
    if let (Some(o), Some(s)) = (dflt, stock) {
        let (om, _) = median_p95(&o.lat);
        let (sm, _) = median_p95(&s.lat);
        let _ = writeln!(
            d,
            "- Latency at defaults: ours {:.1} ms vs stock {:.1} ms median, ratio {:.2} — {}.",
            om,
            sm,
            om / sm,
            if om < sm {
                "lower than the stock tunnel"
            } else {
                "**not** lower than the stock tunnel"
            }
        );
        if let Some(l) = r.sessions.get(1) {
            let (lm, _) = median_p95(&l.lat);
            let _ = writeln!(
                d,
                "- Latency at the low-latency setting: {:.1} ms median, ratio {:.2} to stock.",
                lm,
                lm / sm
            );
        }
        let _ = writeln!(d, "- Bandwidth while playing at defaults: ours {:.1} kbit/s vs stock {:.1} kbit/s: {:.1}× lower — {} the 15× asked.", o.music_kbps, s.music_kbps, s.music_kbps / o.music_kbps, if s.music_kbps / o.music_kbps >= 15.0 { "meets" } else { "**misses**" });
        let _ = writeln!(
            d,
            "- Idle: ours {} bytes in 10 s, stock {} bytes.",
            o.idle_bytes, s.idle_bytes
        );
    }
    for (c, s, fl) in r.cpu_rows {
        let ratio = (s.cpu_net.0 + s.cpu_net.1) / fl.per_sec();
        let _ = writeln!(
            d,
            "- CPU at complexity {c}: {:.2}× raw libopus encode+decode ({})",
            ratio,
            if ratio < 1.25 {
                "under the 1.25× target"
            } else {
                "**over** the 1.25× target"
            }
        );
    }
    let _ = writeln!(d);
    let _ = writeln!(d, "{}", defaults_section(r));
    d
}

/// The defaults proposed from the figures (the reasoning is in docs/benchmarks.md; the
/// figures quoted are this run's).
fn defaults_section(r: &Report) -> String {
    let mut d = String::new();
    let _ = writeln!(d, "## Proposed defaults\n");
    let q = |label: &str| r.quality.iter().find(|q| q.label.starts_with(label));
    let pesq = |label: &str| {
        q(label)
            .and_then(|q| q.tunnel.as_ref())
            .map(|s| s.pesq)
            .unwrap_or(f64::NAN)
    };
    let raw = |label: &str| {
        q(label)
            .and_then(|q| q.raw.as_ref())
            .map(|s| s.pesq)
            .unwrap_or(f64::NAN)
    };
    let lat = |i: usize| {
        r.sessions
            .get(i)
            .map(|s| median_p95(&s.lat).0)
            .unwrap_or(f64::NAN)
    };
    let cpu = |c: u8| {
        r.cpu_rows
            .iter()
            .find(|(k, _, _)| *k == c)
            .map(|(_, s, _)| (s.cpu_net.0 + s.cpu_net.1) * 1e3)
            .unwrap_or(f64::NAN)
    };
    let extra = |tag: &str| {
        r.raw_extra
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, s)| s.pesq)
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(d, "- **Bitrate: 64 kbit/s (keep).** Tunnel PESQ-WB at 16/32/64/128 kbit/s: {} / {} / {} / {} (raw libopus {} / {} / {} / {}). 16k is clearly worse; from 32k up speech is in the 4s; the curve is not monotonic for stereo Opus (the encoder changes mode between 32k and 64k), so PESQ alone does not pick between 32k and 64k. 64k keeps headroom for music (the music loop costs {} kbit/s on the wire at 64k) while staying ~{:.0}× under the stock PCM tunnel; 32k is the choice for bandwidth-starved links.",
        f2(pesq("opus 16")), f2(pesq("opus 32")), f2(pesq("opus 64")), f2(pesq("opus 128")),
        f2(raw("opus 16")), f2(raw("opus 32")), f2(raw("opus 64")), f2(raw("opus 128")),
        r.sessions.first().map(|s| f1(s.music_kbps)).unwrap_or_default(),
        match (r.sessions.first(), r.sessions.iter().find(|s| s.label.starts_with("stock"))) { (Some(o), Some(s)) => s.music_kbps / o.music_kbps, _ => f64::NAN });
    let _ = writeln!(d, "- **Frame size: 20 ms (keep).** 5 ms frames with a 5 ms block and a {} ms target cut the median latency from {} ms to {} ms, but raw libopus loses PESQ at 64k with short frames (20 ms {}, 10 ms {}, 5 ms {}), and every 5 ms frame carries 12 bytes of RTP + framing, so the wire rate rises ({} vs {} kbit/s). Short frames are an opt-in for interactive use, not the default.",
        r.lowlat_target, f1(lat(0)), f1(lat(1)), f2(raw("opus 64")), f2(extra("64k, 10 ms")), f2(raw("opus 64 kbit/s, 5")),
        r.sessions.get(1).map(|s| f1(s.music_kbps)).unwrap_or_default(), r.sessions.first().map(|s| f1(s.music_kbps)).unwrap_or_default());
    let _ = writeln!(d, "- **Target latency: keep 60 ms at the receiver for real networks.** On loopback a {} ms target held without underruns at 5 ms frames; the default target must also absorb network jitter and the sender's 20 ms frame + 10 ms block, and the end-to-end default still comes in at {} ms against the stock tunnel's {} ms.",
        r.lowlat_target, f1(lat(0)), f1(lat(3)));
    let _ = writeln!(d, "- **Complexity: 5 instead of 10 is worth considering for servers hosting many desktops.** CPU of both daemons per stream-second: complexity 0 {} ms/s, 5 {} ms/s, 10 {} ms/s; raw libopus PESQ-WB at 64k: complexity 0 {}, 5 {}, 10 {}. The encoder is the sender's main cost and the sender is the side that scales with desktops.",
        f2(cpu(0)), f2(cpu(5)), f2(cpu(10)), f2(extra("64k, 20 ms, complexity 0")), f2(extra("64k, 20 ms, complexity 5")), f2(raw("opus 64")));
    d
}
