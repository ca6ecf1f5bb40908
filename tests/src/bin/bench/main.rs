//! Benchmarks side by side (issue 8): latency, bandwidth, CPU, scale and quality of our
//! tunnels against the stock `module-tunnel-sink-new` → `module-native-protocol-tcp` and
//! against raw libopus, every figure measured in the same run; prints the table and writes
//! `docs/benchmarks.md`.
//!
//!     scripts/bench.sh        (builds the modules and the floor example, then runs this)
//!     cargo run --release -p opus-tunnel-tests --bin bench
//!
//! Environment: `BENCH_ONLY=sessions,cpu,scale,quality,encryption` runs some sections only (the doc is
//! then not written unless `BENCH_WRITE=1`); `BENCH_LOWLAT_TARGET` (ms) gives the receiver of
//! the low-latency preset a fixed target (default: auto); `BENCH_SCALE=1,8,32,60` the tunnel counts;
//! `BENCH_PYTHON` the Python with numpy, scipy and pesq (default: a venv in
//! target/bench-venv, created when missing).

mod latency;
mod report;
mod rig;

use anyhow::{anyhow, bail, Context, Result};
use latency::{click_latencies, median_p95};
use opus_tunnel_tests::linkcheck::render_to_render_and_play;
use opus_tunnel_tests::signal::music_loop;
use opus_tunnel_tests::timed::sink_latency_usec;
use opus_tunnel_tests::{
    free_port, play, play_loop, require_modules, write_s16le, Daemon, Player, Recorder,
};
use report::{report, Report};
use rig::{cpu_secs, num, sink_inputs, sinks, Config, Kind, Measured, Rig, Window};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The low-latency preset of the README: the tunnel sink's arguments (the receiver at its
/// defaults: it sizes its buffer itself; `BENCH_LOWLAT_TARGET` gives it a fixed target).
const LOWLAT_SENDER: &str =
    "compression.frame_size=2.5 compression.opus.application=lowdelay latency_msec=2";
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

/// The heading of the section of docs/benchmarks.md that `scripts/quality.sh` owns.
const QUALITY_MATRIX_HEADING: &str = "## Codec quality matrix";

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
    /// Render to render and render to play per steady click, ms (sender sink → receiver
    /// sink, from timed recordings of both monitors).
    r2r: Vec<(f64, f64)>,
    /// The tunnel sink's reported latency (`pactl list sinks`), ms, read while the clicks play.
    reported: Vec<f64>,
    underruns: f64,
    target_latency_ms: f64,
    notes: Vec<String>,
}

impl Session {
    /// Medians of render to render and render to play, ms (NaN without clicks).
    fn r2r_medians(&self) -> (f64, f64) {
        let col = |f: fn(&(f64, f64)) -> f64| self.r2r.iter().map(f).collect::<Vec<_>>();
        (median_p95(&col(|c| c.0)).0, median_p95(&col(|c| c.1)).0)
    }
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
    // Render to render, and the latency the tunnel sink reports meanwhile (ten readings 200 ms
    // apart from the 4th second of the train on). The stock tunnel's latency is hundreds of ms
    // and it renders a round trip's worth at a time: clicks further apart, a wider match,
    // written through a 100 ms buffer (as the WAN table does).
    let stock = cfg.kind == Kind::Stock;
    let (r2r, reported) = std::thread::scope(|sc| {
        let readings = sc.spawn(|| {
            std::thread::sleep(Duration::from_secs(4));
            let mut v = Vec::new();
            for _ in 0..10 {
                if let Ok((l, _)) = sink_latency_usec(&rig.sender, "tun") {
                    v.push(l / 1000.0);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            v
        });
        let r2r = render_to_render_and_play(
            &rig.sender,
            "tun",
            &rig.receiver,
            "null",
            if stock { 8 } else { 14 },
            Duration::from_millis(if stock { 1500 } else { 400 }),
            if stock { 100 } else { 10 },
        );
        (r2r, readings.join().unwrap_or_default())
    });
    s.r2r = r2r?;
    s.reported = reported;
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
    let (rr, rp) = s.r2r_medians();
    log(&format!(
        "  render to render median {rr:.1} ms, render to play {rp:.1} ms over {} clicks; reported {:?} ms",
        s.r2r.len(),
        s.reported
    ));
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
// Encryption

/// What sealing and opening one stream-second costs (issue 19), µs of CPU: `bench_floor
/// --encryption` (in-process, thread CPU time).
fn encryption_cost(floor: &Path) -> Result<Vec<(String, f64)>> {
    let out = Command::new(floor).arg("--encryption").output()?;
    if !out.status.success() {
        bail!(
            "bench_floor --encryption: {}",
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
    Ok(vec![
        ("Opus 64 kbit/s, 20 ms packets".to_string(), get("opus_us")),
        (
            "PCM L16 stereo 48 kHz, 20 ms packets".to_string(),
            get("pcm_us"),
        ),
    ])
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

    /// opusenc/opusdec (opus-tools) at their defaults but for the bitrate and frame size:
    /// `scripts/quality_matrix.py opusenc`, the anchor of issue 17. Returns the score of the
    /// round trip of `input`.
    fn opusenc(&self, input: &Path, work: &Path, bitrate: u32, frame_ms: f64) -> Result<Score> {
        let out = work.join(format!("opusenc-{bitrate}-{frame_ms}.raw"));
        let run = Command::new(&self.exe)
            .arg(root().join("scripts/quality_matrix.py"))
            .arg("opusenc")
            .arg(input)
            .arg(&out)
            .arg((bitrate / 1000).to_string())
            .arg(frame_ms.to_string())
            .args(["10", "vbr"])
            .output()
            .context("scripts/quality_matrix.py opusenc")?;
        if !run.status.success() {
            bail!(
                "quality_matrix.py opusenc: {}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
        // opusdec removes the pre-skip, so its output may start a sample or two early:
        // quality_matrix.py's scorer (tests/tests/quality.rs's) aligns either way.
        let run = Command::new(&self.exe)
            .arg(root().join("scripts/quality_matrix.py"))
            .arg("score")
            .arg(input)
            .arg(&out)
            .output()
            .context("scripts/quality_matrix.py score")?;
        if !run.status.success() {
            bail!(
                "quality_matrix.py score: {}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
        let j = String::from_utf8_lossy(&run.stdout).trim().to_string();
        Ok(Score {
            pesq: json_num(&j, "pesq_wb"),
            snr: json_num(&j, "snr_db"),
            exact: f64::NAN,
            dropouts: json_num(&j, "dropouts"),
            lag: json_num(&j, "lag"),
            raw: j,
        })
    }

    /// The bench speech, written to `work`: its file and its length in seconds.
    fn speech(&self, work: &Path) -> Result<(PathBuf, f64)> {
        let speech = work.join("speech.raw");
        let secs: f64 = self
            .run(&["speech", &speech.display().to_string()])?
            .parse()
            .map_err(|e| anyhow!("speech length: {e}"))?;
        Ok((speech, secs))
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
    /// opusenc/opusdec at their defaults with the same bitrate and frame size.
    opusenc: Option<Score>,
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
            opusenc: None,
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
    let lowlat_target: Option<u32> = std::env::var("BENCH_LOWLAT_TARGET")
        .ok()
        .and_then(|v| v.parse().ok());
    let scale_ns: Vec<usize> = std::env::var("BENCH_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        // Not 64: N pacat clients and one pactl are N + 1 clients of the sender's daemon, and
        // PulseAudio's native protocol drops every client beyond its 64th (MAX_CONNECTIONS).
        .unwrap_or_else(|| vec![1, 8, 32, 60]);
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let work = std::env::temp_dir().join(format!("ot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let floor_exe = floor_bin()?;

    let lowlat_receiver =
        lowlat_target.map_or(String::new(), |t| format!("target_latency_msec={t}"));
    let configs = [
        Config::ours("ours opus, defaults", "", ""),
        Config::ours("ours opus, low latency", LOWLAT_SENDER, &lowlat_receiver),
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
                let (speech, secs) = py.speech(&work)?;
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
                    let o = py.opusenc(&speech, &work, b, 20.0)?;
                    log(&format!("  opusenc {}k: {}", b / 1000, o.raw));
                    let mut row =
                        QualityRow::tunnel(format!("opus {} kbit/s, 20 ms", b / 1000), tu, Some(r));
                    row.opusenc = Some(o);
                    quality.push(row);
                }
                let cfg = Config::ours("opus lowlat", LOWLAT_SENDER, &lowlat_receiver);
                let tu = tunnel_score(&cfg)?;
                let r = raw_score(
                    &["bitrate=64000".into(), "frame_ms=2.5".into()],
                    "64k-2.5ms",
                )?;
                let mut row = QualityRow::tunnel(
                    "opus 64 kbit/s, 2.5 ms lowdelay (low-latency preset; raw libopus and opusenc: 2.5 ms, audio application)",
                    tu,
                    Some(r),
                );
                row.opusenc = Some(py.opusenc(&speech, &work, 64_000, 2.5)?);
                quality.push(row);
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

    // 4b. Transparency alone (`BENCH_ONLY=pcm`, not part of the full run): speech through
    //     `compression=none` BENCH_PCM_RUNS times (3) and through the stock tunnel once, each
    //     score printed (PESQ-WB, SNR, the fraction of samples bit-exact, dropouts).
    if only.as_ref().is_some_and(|o| o.iter().any(|x| x == "pcm")) {
        let py = Python::setup()?;
        let (speech, secs) = py.speech(&work)?;
        let runs: usize = std::env::var("BENCH_PCM_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let mut cfgs = vec![Config::ours("none", "compression=none", ""); runs];
        cfgs.push(Config::stock("stock"));
        for cfg in &cfgs {
            let (s, under) = tunnel_speech(cfg, &speech, secs, &py, &work)?;
            println!(
                "pcm {}: PESQ-WB {:.3}, SNR {:.1} dB, bit-exact {:.4}, dropouts {}, underruns {}",
                cfg.label, s.pesq, s.snr, s.exact, s.dropouts, under
            );
        }
    }

    // 5. What encryption adds (issue 19), in-process.
    let encryption = if want("encryption") {
        encryption_cost(&floor_exe)?
    } else {
        Vec::new()
    };
    for (what, us) in &encryption {
        log(&format!(
            "encryption: {what}: {us:.0} us of CPU per stream-second"
        ));
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
        encryption: &encryption,
        lowlat_receiver: lowlat_receiver.clone(),
        total,
        load_start,
        load_end,
    });
    println!("{doc}");
    if only.is_none() || std::env::var_os("BENCH_WRITE").is_some() {
        let path = root().join("docs/benchmarks.md");
        std::fs::create_dir_all(root().join("docs"))?;
        // The codec quality matrix (scripts/quality.sh) is its own section at the end of the
        // file: kept as it is.
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| {
                old.find(QUALITY_MATRIX_HEADING)
                    .map(|at| old[at..].to_string())
            })
            .unwrap_or_default();
        let doc = if kept.is_empty() {
            doc
        } else {
            format!("{}\n\n{kept}", doc.trim_end())
        };
        std::fs::write(&path, &doc)?;
        log(&format!("wrote {}", path.display()));
    }
    // BENCH_KEEP=1 keeps the recordings (the work directory is printed).
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        log(&format!("kept {}", work.display()));
    }
    log(&format!("bench took {total:.0} s"));
    Ok(())
}
