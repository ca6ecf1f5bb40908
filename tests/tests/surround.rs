//! Surround through Opus tunnels (multistream, RFC 7845 mapping family 1), between real
//! daemons: a distinct tone on each channel of 5.1 (`channel_map=surround-51`) and 7.1
//! (`surround-71`), the LFE's below 200 Hz, must arrive on its own channel (±5 Hz, level
//! ±1 dB), PulseAudio → PulseAudio and PulseAudio → PipeWire; a receiver sink of another
//! layout gets the daemon's remix (left stays left); a receiver asked for >2-channel Opus
//! without the multistream header refuses with 415.
//!
//! sender daemon: `pacat --channels=N --channel-map=MAP` → `module-tunnel-sink-opus
//! channels=N channel_map=MAP` → receiver: `module-opus-protocol-tcp sink=surround` (a null
//! sink of the same layout) → `parec --channels=N --channel-map=MAP surround.monitor`.

use opus_tunnel_tests::analysis::{channel, dominant_frequency, hann_spectrum, rms_dbfs};
use opus_tunnel_tests::pipewire::{require_pw_modules, PipeWire};
use opus_tunnel_tests::process::clock_ticks_per_second;
use opus_tunnel_tests::signal::dbfs_to_amplitude;
use opus_tunnel_tests::{
    begin, free_port, require_modules, serial, CountingProxy, Daemon, RECEIVER, SENDER,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RATE: usize = 48_000;
const LEVEL: f64 = -12.0;
const S51: &str = "front-left,front-right,rear-left,rear-right,front-center,lfe";
const S71: &str =
    "front-left,front-right,rear-left,rear-right,front-center,lfe,side-left,side-right";
/// One tone per channel of surround-51 (PulseAudio's order FL FR RL RR FC LFE), 200 Hz apart
/// (closer, the codec's noise at 96 kbit/s for 5.1 reaches the neighbour's frequency at −26
/// dB) and at most 1.5 kHz (the receiver's drift correction moves a tone by its ratio, up to
/// ~1500 ppm seen while it locks, which must stay well inside ±5 Hz).
const F51: [f64; 6] = [300.0, 500.0, 700.0, 900.0, 1100.0, 80.0];
/// One tone per channel of surround-71 (FL FR RL RR FC LFE SL SR).
const F71: [f64; 8] = [300.0, 500.0, 700.0, 900.0, 1100.0, 60.0, 1300.0, 1500.0];

/// One second of `freqs[c]` Hz on channel c at `LEVEL` dBFS peak, s16le interleaved, no
/// fades: with whole-Hz tones it repeats seamlessly.
fn tones(freqs: &[f64]) -> Vec<u8> {
    let amp = dbfs_to_amplitude(LEVEL) * 32767.0;
    let mut out = Vec::with_capacity(RATE * freqs.len() * 2);
    for i in 0..RATE {
        let t = i as f64 / RATE as f64;
        for f in freqs {
            let v = (amp * (2.0 * std::f64::consts::PI * f * t).sin()).round() as i16;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// CPU time (user + system) a process has used, s.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / clock_ticks_per_second() as f64
}

/// A child process of ours, killed (by its pid) and reaped when dropped; a thread feeds its
/// stdin or collects its stdout.
struct Proc {
    child: Child,
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stream_args(cmd: &mut Command, dev: &str, channels: usize, map: &str) {
    cmd.args([
        "--raw",
        "--format=s16le",
        "--rate=48000",
        &format!("--channels={channels}"),
        &format!("--channel-map={map}"),
        "--latency-msec=100",
        "--client-name=opus-tunnel-tests",
        "-d",
        dev,
    ]);
}

/// `pacat` (a command for some server) playing `freqs` into `sink` in a loop.
fn play(mut cmd: Command, sink: &str, map: &str, freqs: &[f64]) -> Proc {
    cmd.arg("--playback");
    stream_args(&mut cmd, sink, freqs.len(), map);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pacat");
    let mut stdin = child.stdin.take().expect("pacat stdin");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let bytes = tones(freqs);
    std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            if stdin.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    Proc {
        child,
        stop,
        got: Arc::default(),
    }
}

/// `parec` (a command for some server) recording `source` with `channels` and `map`.
fn record(mut cmd: Command, source: &str, channels: usize, map: &str) -> Proc {
    cmd.arg("--record");
    stream_args(&mut cmd, source, channels, map);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn parec");
    let mut stdout = child.stdout.take().expect("parec stdout");
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let got2 = got.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16384];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut g) = got2.lock() {
                g.extend_from_slice(&buf[..n]);
            }
        }
    });
    Proc {
        child,
        stop: Arc::default(),
        got,
    }
}

impl Proc {
    /// The last `secs` of what the recorder has delivered (interleaved s16), if it has.
    fn last(&self, secs: f64, channels: usize) -> Option<Vec<i16>> {
        let g = self.got.lock().ok()?;
        let want = (secs * RATE as f64) as usize * channels * 2;
        let whole = g.len() / (channels * 2) * channels * 2;
        (whole >= want).then(|| {
            g[whole - want..whole]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect()
        })
    }
}

/// What arrived on each channel: dominant frequency, level (dBFS), and the loudest of the
/// other channels' tones relative to its own (dB).
#[derive(Debug)]
struct Chan {
    hz: f64,
    dbfs: f64,
    leak_db: f64,
}

fn analyse(audio: &[i16], freqs: &[f64]) -> Vec<Chan> {
    let n = freqs.len();
    (0..n)
        .map(|c| {
            let x = channel(audio, c, n);
            let spec = hann_spectrum(&x);
            let bin_hz = RATE as f64 / x.len() as f64;
            let at = |f: f64| {
                let k = (f / bin_hz).round() as usize;
                spec[k.saturating_sub(3)..(k + 4).min(spec.len())]
                    .iter()
                    .fold(0.0f64, |a, &b| a.max(b))
            };
            let own = at(freqs[c]);
            let leak = freqs
                .iter()
                .enumerate()
                .filter(|(o, _)| *o != c)
                .map(|(_, &f)| at(f))
                .fold(0.0f64, f64::max);
            Chan {
                hz: dominant_frequency(&x, RATE as u32),
                dbfs: rms_dbfs(&x),
                leak_db: 20.0 * ((leak + 1e-12) / (own + 1e-12)).log10(),
            }
        })
        .collect()
}

/// Each channel's own tone within ±5 Hz and ±1 dB, and every other channel's tone at least
/// 20 dB below it: a misrouted or remixed channel would carry another tone within a few dB (a
/// clean run leaves them 50–85 dB down; a glitch of a loaded machine's PipeWire graph once
/// left one 28 dB down).
fn each_on_its_own(chans: &[Chan], freqs: &[f64]) -> bool {
    chans
        .iter()
        .zip(freqs)
        .all(|(c, f)| (c.hz - f).abs() <= 5.0 && (c.dbfs - LEVEL).abs() <= 1.0 && c.leak_db < -20.0)
}

/// Waits (at most `timeout`) until the last 2 s of `rec` hold each tone on its own channel;
/// panics with what arrived and `logs` otherwise. Returns the time it took.
fn expect_each_channel(
    test: &str,
    rec: &Proc,
    freqs: &[f64],
    timeout: Duration,
    logs: &dyn Fn() -> String,
) -> Duration {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(audio) = rec.last(2.0, freqs.len()) {
            let chans = analyse(&audio, freqs);
            if each_on_its_own(&chans, freqs) {
                // The window may still hold the stream's first moments: judge the next 2 s,
                // all of them steady.
                let first = t0.elapsed();
                std::thread::sleep(Duration::from_secs(2));
                let audio = rec.last(2.0, freqs.len()).expect("recording goes on");
                let chans = analyse(&audio, freqs);
                assert!(
                    each_on_its_own(&chans, freqs),
                    "{test}: the tones arrived, then 2 s later not each on its own channel at \
                     {LEVEL} dBFS ±1 dB: {chans:#?}\n{}",
                    logs()
                );
                for (i, (c, f)) in chans.iter().zip(freqs).enumerate() {
                    println!(
                        "{test}: channel {i}: sent {f} Hz, got {:.2} Hz at {:.2} dBFS (sent {LEVEL}), \
                         other tones {:.1} dB",
                        c.hz, c.dbfs, c.leak_db
                    );
                }
                return first;
            }
            last = Some(chans);
        }
    }
    panic!(
        "{test}: not every tone on its own channel within {timeout:?}; sent {freqs:?} at \
         {LEVEL} dBFS, last 2 s: {last:#?}\n{}",
        logs()
    );
}

fn pa_receiver(port: u16, channels: usize, map: &str) -> Daemon {
    Daemon::builder()
        .name("receiver")
        .line(format!(
            "load-module module-null-sink sink_name=surround rate=48000 channels={channels} channel_map={map}"
        ))
        .line(format!(
            "load-module {RECEIVER} port={port} listen=127.0.0.1 sink=surround auth-anonymous=1"
        ))
        .start()
        .unwrap_or_else(|e| panic!("receiver: {e:#}"))
}

/// A sender daemon with the tunnel sink `tun` of `channels`/`map` toward `port`.
fn pa_sender(port: u16, channels: usize, map: &str, remote: &str) -> Daemon {
    let sender = Daemon::named("sender");
    let args = format!(
        "sink_name=tun server=tcp:127.0.0.1:{port} sink={remote} channels={channels} channel_map={map}"
    );
    sender
        .load_module(SENDER, &args)
        .unwrap_or_else(|e| panic!("load-module {SENDER} {args}: {e}\n{}", sender.log_tail(30)));
    sender
}

fn pa_to_pa(test: &str, pa_map: &str, map: &str, freqs: &[f64], kbps_default: i32) {
    let Some(_g) = begin(test, &[SENDER, RECEIVER]) else {
        return;
    };
    let port = free_port();
    let receiver = pa_receiver(port, freqs.len(), pa_map);
    let proxy = CountingProxy::start(port);
    let sender = pa_sender(proxy.port(), freqs.len(), pa_map, "surround");
    // The default bitrate scales with the channels: 32 kbit/s a channel.
    let props = sender.sink_properties("tun").expect("tun's properties");
    assert_eq!(
        props.get("compression.bitrate").map(String::as_str),
        Some(kbps_default.to_string().as_str()),
        "{test}: default bitrate"
    );
    let rec = record(
        receiver.command("parec"),
        "surround.monitor",
        freqs.len(),
        pa_map,
    );
    let _player = play(sender.command("pacat"), "tun", pa_map, freqs);
    let logs = || {
        format!(
            "--- sender ---\n{}\n--- receiver ---\n{}",
            sender.log_tail(30),
            receiver.log_tail(30)
        )
    };
    let took = expect_each_channel(test, &rec, freqs, Duration::from_secs(20), &logs);
    println!("{test}: every channel on its own after {took:?}");
    // What it costs at the defaults, over 5 s: the wire toward the receiver and the CPU of
    // both daemons (the tones are pure, so unconstrained VBR spends more than on music).
    let cpu = |d: &Daemon| cpu_secs(d.pid());
    let (b0, s0, r0, t0) = (
        proxy.bytes_to_server(),
        cpu(&sender),
        cpu(&receiver),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(5));
    let secs = t0.elapsed().as_secs_f64();
    let kbps = (proxy.bytes_to_server() - b0) as f64 * 8.0 / secs / 1000.0;
    println!(
        "{test}: {kbps:.1} kbit/s on the wire (compression.bitrate {kbps_default}); CPU: sender \
         daemon {:.1} %, receiver daemon {:.1} % of one core",
        (cpu(&sender) - s0) / secs * 100.0,
        (cpu(&receiver) - r0) / secs * 100.0,
        kbps_default = kbps_default
    );
    assert!(
        kbps > 0.3 * f64::from(kbps_default) / 1000.0 && kbps < 600.0,
        "{test}: {kbps:.1} kbit/s on the wire"
    );
    // The receiver's stream carries the sender's positions.
    let inputs = receiver.pactl_ok(&["list", "sink-inputs"]);
    assert!(
        inputs.contains(&format!("Channel Map: {map}")),
        "{test}: the receiver's stream lacks the map {map}:\n{inputs}"
    );
    assert!(sender.is_alive() && receiver.is_alive());
}

#[test]
fn s1_surround51_pulseaudio_to_pulseaudio() {
    pa_to_pa(
        "s1_surround51_pulseaudio_to_pulseaudio",
        "surround-51",
        S51,
        &F51,
        192_000,
    );
}

#[test]
fn s2_surround71_pulseaudio_to_pulseaudio() {
    pa_to_pa(
        "s2_surround71_pulseaudio_to_pulseaudio",
        "surround-71",
        S71,
        &F71,
        256_000,
    );
}

/// A stereo receiver sink: the tunnel's stream keeps its 5.1 map and the daemon remixes, so
/// the front-left tone is on the left and the front-right one on the right, never swapped.
#[test]
fn s3_surround51_into_a_stereo_sink_is_remixed() {
    let test = "s3_surround51_into_a_stereo_sink_is_remixed";
    let Some(_g) = begin(test, &[SENDER, RECEIVER]) else {
        return;
    };
    let port = free_port();
    let receiver = Daemon::receiver("receiver", port, "auth-anonymous=1");
    let sender = pa_sender(port, 6, "surround-51", "null");
    let rec = record(
        receiver.command("parec"),
        "null.monitor",
        2,
        "front-left,front-right",
    );
    let _player = play(sender.command("pacat"), "tun", "surround-51", &F51);
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(a) = rec.last(2.0, 2) {
            let (l, r) = (channel(&a, 0, 2), channel(&a, 1, 2));
            let (sl, sr) = (hann_spectrum(&l), hann_spectrum(&r));
            let db = |s: &[f64], f: f64| 20.0 * (s[(f / 0.5).round() as usize] + 1e-12).log10();
            // The FL tone: left only; the FR tone: right only (PulseAudio's remix sends FC and
            // LFE to both, rear-left to the left, rear-right to the right).
            let (fl_l, fl_r) = (db(&sl, F51[0]), db(&sr, F51[0]));
            let (fr_l, fr_r) = (db(&sl, F51[1]), db(&sr, F51[1]));
            last = format!(
                "FL's {} Hz: L {fl_l:.1} R {fl_r:.1} dB; FR's {} Hz: L {fr_l:.1} R {fr_r:.1} dB",
                F51[0], F51[1]
            );
            if fl_l - fl_r > 30.0 && fr_r - fr_l > 30.0 {
                println!("{test}: {last}");
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{test}: {last}\n{}\n{}",
            sender.log_tail(30),
            receiver.log_tail(30)
        );
    }
    let inputs = receiver.pactl_ok(&["list", "sink-inputs"]);
    assert!(
        inputs.contains(&format!("Channel Map: {S51}")),
        "{test}: the stream should keep its own map:\n{inputs}"
    );
}

/// A hello for 6-channel Opus without the multistream header (what a sender from before
/// surround, or a confused one, would send) gets 415 with a reason; the daemon lives on.
#[test]
fn s4_multistream_without_the_header_is_refused() {
    let test = "s4_multistream_without_the_header_is_refused";
    if !require_modules(test, &[RECEIVER]) {
        return;
    }
    let _g = serial();
    let port = free_port();
    let receiver = Daemon::receiver("receiver", port, "auth-anonymous=1");
    let ask = |text: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(text.as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    };
    // The newest version the receiver speaks, from its 505 to a version from the future
    // (`Supported: 1,2`).
    let v505 = ask("OPUS-TUNNEL/999 PLAY\n\n");
    let version = v505
        .lines()
        .find_map(|l| l.strip_prefix("Supported:"))
        .and_then(|v| v.split(',').map(str::trim).next_back())
        .unwrap_or_else(|| panic!("{test}: no Supported header in {v505:?}"))
        .to_string();
    let reply = ask(&format!(
        "OPUS-TUNNEL/{version} PLAY\nName: old\nHost: h\nCodec: opus\nRate: 48000\nChannels: 6\n\
         Channel-Map: {S51}\nFrame-Usec: 20000\n\n"
    ));
    println!("{test}: reply {reply:?}");
    assert!(
        reply.contains(" 415 ") && reply.contains("multistream"),
        "{test}: {reply:?}"
    );
    assert!(receiver.is_alive());
}

/// The record direction: `module-tunnel-source-opus channels=6 channel_map=surround-51` on
/// the desktop records the receiver's 5.1 `surround.monitor`, which the receiver's daemon
/// encodes (multistream, the knobs and default bitrate from the hello); each tone arrives on
/// its own channel of the desktop's tunnel source.
#[test]
fn s7_surround51_record_direction() {
    record_direction(
        "s7_surround51_record_direction",
        "surround-51",
        &F51,
        192_000,
    );
}

#[test]
fn s7b_surround71_record_direction() {
    record_direction(
        "s7b_surround71_record_direction",
        "surround-71",
        &F71,
        256_000,
    );
}

fn record_direction(test: &str, map: &str, freqs: &[f64], kbps_default: i32) {
    let Some(_g) = begin(test, &["module-tunnel-source-opus", RECEIVER]) else {
        return;
    };
    let n = freqs.len();
    let port = free_port();
    let receiver = pa_receiver(port, n, map);
    let _tones = play(receiver.command("pacat"), "surround", map, freqs);
    let desktop = Daemon::named("desktop");
    let args = format!(
        "source_name=surr server=tcp:127.0.0.1:{port} source=surround.monitor channels={n} \
         channel_map={map}"
    );
    desktop
        .load_module("module-tunnel-source-opus", &args)
        .unwrap_or_else(|e| panic!("{test}: {e}\n{}", desktop.log_tail(30)));
    let rec = record(desktop.command("parec"), "surr", n, map);
    let logs = || {
        format!(
            "--- desktop ---\n{}\n--- receiver ---\n{}",
            desktop.log_tail(30),
            receiver.log_tail(30)
        )
    };
    let took = expect_each_channel(test, &rec, freqs, Duration::from_secs(20), &logs);
    println!("{test}: every channel on its own after {took:?}");
    let props = desktop.pactl_ok(&["list", "sources"]);
    assert!(
        props.contains(&format!("compression.bitrate = \"{kbps_default}\"")),
        "{test}: the source's default bitrate should be {kbps_default}:\n{props}"
    );
    assert!(desktop.is_alive() && receiver.is_alive());
}

/// Live knobs reach the multistream encoder: a 5.1 tunnel at constrained VBR holds
/// `compression.bitrate` (the total of its four streams) on the wire, and
/// `update-sink-proplist tun compression.bitrate=96000` while it plays halves the rate; the
/// tones stay each on its own channel.
#[test]
fn s9_surround51_live_bitrate() {
    let test = "s9_surround51_live_bitrate";
    let Some(_g) = begin(test, &[SENDER, RECEIVER]) else {
        return;
    };
    let port = free_port();
    let receiver = pa_receiver(port, 6, "surround-51");
    let proxy = CountingProxy::start(port);
    let sender = Daemon::named("sender");
    let args = format!(
        "sink_name=tun server=tcp:127.0.0.1:{} sink=surround channels=6 channel_map=surround-51 \
         compression.opus.vbr_constraint=true",
        proxy.port()
    );
    sender
        .load_module(SENDER, &args)
        .unwrap_or_else(|e| panic!("{test}: {e}\n{}", sender.log_tail(30)));
    let rec = record(
        receiver.command("parec"),
        "surround.monitor",
        6,
        "surround-51",
    );
    let _player = play(sender.command("pacat"), "tun", "surround-51", &F51);
    let logs = || {
        format!(
            "--- sender ---\n{}\n--- receiver ---\n{}",
            sender.log_tail(30),
            receiver.log_tail(30)
        )
    };
    expect_each_channel(test, &rec, &F51, Duration::from_secs(20), &logs);
    let wire = |secs: u64| {
        let (b0, t0) = (proxy.bytes_to_server(), Instant::now());
        std::thread::sleep(Duration::from_secs(secs));
        (proxy.bytes_to_server() - b0) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1000.0
    };
    let before = wire(4);
    let out = sender.cli("update-sink-proplist tun compression.bitrate=96000");
    std::thread::sleep(Duration::from_secs(1));
    let after = wire(4);
    let props = sender.sink_properties("tun").expect("tun's properties");
    println!(
        "{test}: {before:.1} kbit/s on the wire at 192000, {after:.1} after \
         compression.bitrate=96000 ({out:?})"
    );
    assert_eq!(
        props.get("compression.bitrate").map(String::as_str),
        Some("96000"),
        "{test}: the property should show the new bitrate"
    );
    // Payload at the bitrate plus 14 bytes of RTP header and framing per 20 ms packet.
    assert!(
        (170.0..230.0).contains(&before),
        "{test}: {before:.1} kbit/s at 192000\n{}",
        logs()
    );
    assert!(
        (80.0..125.0).contains(&after),
        "{test}: {after:.1} kbit/s at 96000\n{}",
        logs()
    );
    expect_each_channel(test, &rec, &F51, Duration::from_secs(10), &logs);
}

// ---- PulseAudio → PipeWire ---------------------------------------------------------------

const PW_RECEIVER: &str = "libpipewire-module-opus-protocol-tcp";

/// A null sink named `surround` made through `pw`'s pulse server, once that server lists it
/// and the session manager has given it its monitor ports. (`load-module` may answer before
/// the sink is in the server's list of devices: once, in CI, `parec -d surround.monitor`
/// started right after it recorded nothing for 25 s while the tunnel's stream sat suspended,
/// never linked. Listed is not enough either: in CI a `parec` started 10 ms after the monitor
/// was listed, before the sink's ports were made, was never linked — WirePlumber logged "item
/// deactivated before format set" — and nothing in the graph ever ran.)
fn pw_surround_sink(pw: &PipeWire, channels: usize, map: &str) {
    pw.pactl_ok(&[
        "load-module",
        "module-null-sink",
        "sink_name=surround",
        "rate=48000",
        &format!("channels={channels}"),
        &format!("channel_map={map}"),
    ]);
    let t0 = Instant::now();
    while !pw
        .pactl_ok(&["list", "short", "sources"])
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("surround.monitor"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "surround.monitor not listed 10 s after load-module\n{}",
            pw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let monitor_ports = || {
        pw.output_ports()
            .iter()
            .filter(|p| p.starts_with("surround:monitor_"))
            .count()
    };
    while monitor_ports() < channels {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "surround's {channels} monitor ports not made 10 s after load-module\n{}",
            pw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pa_to_pw(test: &str, pa_map: &str, map: &str, freqs: &[f64]) {
    if !require_modules(test, &[SENDER]) || !require_pw_modules(test, &[PW_RECEIVER]) {
        return;
    }
    let _g = serial();
    let port = free_port();
    let pw = PipeWire::builder()
        .name("pw-receiver")
        .module(
            PW_RECEIVER,
            &format!(
                "server.address = [ \"tcp:127.0.0.1:{port}\" ] auth.anonymous = true target.object = \"surround\""
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_RECEIVER}: {e:#}"));
    pw_surround_sink(&pw, freqs.len(), pa_map);
    let rec = record(pw.command("parec"), "surround.monitor", freqs.len(), pa_map);
    let sender = pa_sender(port, freqs.len(), pa_map, "surround");
    let _player = play(sender.command("pacat"), "tun", pa_map, freqs);
    let logs = || {
        format!(
            "--- sender ---\n{}\n--- pipewire ---\n{}",
            sender.log_tail(30),
            pw.log()
        )
    };
    let took = expect_each_channel(test, &rec, freqs, Duration::from_secs(25), &logs);
    println!("{test}: every channel on its own after {took:?} ({map})");
    assert!(sender.is_alive());
}

#[test]
fn s5_surround51_pulseaudio_to_pipewire() {
    pa_to_pw(
        "s5_surround51_pulseaudio_to_pipewire",
        "surround-51",
        S51,
        &F51,
    );
}

#[test]
fn s6_surround71_pulseaudio_to_pipewire() {
    pa_to_pw(
        "s6_surround71_pulseaudio_to_pipewire",
        "surround-71",
        S71,
        &F71,
    );
}

// ---- PipeWire → PulseAudio ---------------------------------------------------------------

const PW_SENDER: &str = "libpipewire-module-opus-tunnel";

/// The PipeWire tunnel sink with `audio.channels = 6` and no `audio.position` (its default
/// 5.1, FL FR FC LFE RL RR) toward a PulseAudio receiver whose sink is surround-51 (FL FR RL
/// RR FC LFE): each position's tone lands on that position, whatever the order.
#[test]
fn s8_surround51_pipewire_to_pulseaudio() {
    let test = "s8_surround51_pipewire_to_pulseaudio";
    if !require_modules(test, &[RECEIVER]) || !require_pw_modules(test, &[PW_SENDER]) {
        return;
    }
    let _g = serial();
    let port = free_port();
    let receiver = pa_receiver(port, 6, "surround-51");
    let pw = PipeWire::builder()
        .name("pw-sender")
        .module(
            PW_SENDER,
            &format!(
                "tunnel.mode = sink server.address = \"tcp:127.0.0.1:{port}\" remote.sink = \"surround\" \
                 audio.channels = 6 stream.props = {{ node.name = \"tun\" }}"
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_SENDER}: {e:#}"));
    // Wait for the tunnel's node before playing into it.
    let t0 = Instant::now();
    while pw.node_props("tun").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{test}: no node tun\n{}",
            pw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bitrate = pw
        .node_props("tun")
        .and_then(|p| p.get("compression.bitrate").cloned());
    assert_eq!(
        bitrate.as_deref(),
        Some("192000"),
        "{test}: default bitrate"
    );
    let rec = record(
        receiver.command("parec"),
        "surround.monitor",
        6,
        "surround-51",
    );
    // pacat plays in PulseAudio's surround-51 order; PipeWire maps it to the node's positions.
    let _player = play(pw.command("pacat"), "tun", "surround-51", &F51);
    let logs = || {
        format!(
            "--- pipewire ---\n{}\n--- receiver ---\n{}",
            pw.log(),
            receiver.log_tail(30)
        )
    };
    let took = expect_each_channel(test, &rec, &F51, Duration::from_secs(25), &logs);
    println!("{test}: every channel on its own after {took:?}");
    let inputs = receiver.pactl_ok(&["list", "sink-inputs"]);
    assert!(
        inputs
            .contains("Channel Map: front-left,front-right,front-center,lfe,rear-left,rear-right"),
        "{test}: the receiver's stream should carry PipeWire's positions:\n{inputs}"
    );
    assert!(receiver.is_alive());
}

/// PipeWire → PipeWire: the PipeWire tunnel sink with `audio.channels = 8` (its default 7.1,
/// FL FR FC LFE RL RR SL SR) toward the PipeWire receiver, whose target is a surround-71 sink
/// (PulseAudio's order FL FR RL RR FC LFE SL SR) made through its pulse server.
#[test]
fn s10_surround71_pipewire_to_pipewire() {
    let test = "s10_surround71_pipewire_to_pipewire";
    if !require_pw_modules(test, &[PW_SENDER, PW_RECEIVER]) {
        return;
    }
    let _g = serial();
    let port = free_port();
    let rx = PipeWire::builder()
        .name("pw-receiver")
        .module(
            PW_RECEIVER,
            &format!(
                "server.address = [ \"tcp:127.0.0.1:{port}\" ] auth.anonymous = true target.object = \"surround\""
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_RECEIVER}: {e:#}"));
    pw_surround_sink(&rx, 8, "surround-71");
    let rec = record(rx.command("parec"), "surround.monitor", 8, "surround-71");
    let tx = PipeWire::builder()
        .name("pw-sender")
        .module(
            PW_SENDER,
            &format!(
                "tunnel.mode = sink server.address = \"tcp:127.0.0.1:{port}\" remote.sink = \"surround\" \
                 audio.channels = 8 stream.props = {{ node.name = \"tun\" }}"
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_SENDER}: {e:#}"));
    let t0 = Instant::now();
    while tx.node_props("tun").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{test}: no node tun\n{}",
            tx.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _player = play(tx.command("pacat"), "tun", "surround-71", &F71);
    let logs = || {
        format!(
            "--- pw sender ---\n{}\n--- pw receiver ---\n{}",
            tx.log(),
            rx.log()
        )
    };
    let took = expect_each_channel(test, &rec, &F71, Duration::from_secs(25), &logs);
    println!("{test}: every channel on its own after {took:?}");
}

/// The record direction with a PipeWire receiver: it records the 5.1 monitor of a sink made
/// through its pulse server and encodes it (multistream); the PulseAudio tunnel source on the
/// desktop gets each tone on its own channel.
#[test]
fn s11_surround51_record_from_pipewire() {
    let test = "s11_surround51_record_from_pipewire";
    if !require_modules(test, &["module-tunnel-source-opus"])
        || !require_pw_modules(test, &[PW_RECEIVER])
    {
        return;
    }
    let _g = serial();
    let port = free_port();
    let pw = PipeWire::builder()
        .name("pw-receiver")
        .module(
            PW_RECEIVER,
            &format!("server.address = [ \"tcp:127.0.0.1:{port}\" ] auth.anonymous = true"),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_RECEIVER}: {e:#}"));
    pw_surround_sink(&pw, 6, "surround-51");
    let _tones = play(pw.command("pacat"), "surround", "surround-51", &F51);
    let desktop = Daemon::named("desktop");
    let args = format!(
        "source_name=surr server=tcp:127.0.0.1:{port} source=surround.monitor channels=6 \
         channel_map=surround-51"
    );
    desktop
        .load_module("module-tunnel-source-opus", &args)
        .unwrap_or_else(|e| panic!("{test}: {e}\n{}", desktop.log_tail(30)));
    let rec = record(desktop.command("parec"), "surr", 6, "surround-51");
    let logs = || {
        format!(
            "--- desktop ---\n{}\n--- pipewire ---\n{}",
            desktop.log_tail(30),
            pw.log()
        )
    };
    let took = expect_each_channel(test, &rec, &F51, Duration::from_secs(25), &logs);
    println!("{test}: every channel on its own after {took:?}");
    assert!(desktop.is_alive());
}

/// The PipeWire tunnel in source mode with `audio.channels = 6` (its default 5.1 order, FL FR
/// FC LFE RL RR) records a PulseAudio receiver's surround-51 monitor: each position's tone
/// comes out of the PipeWire source on that position.
#[test]
fn s12_surround51_pipewire_tunnel_source() {
    let test = "s12_surround51_pipewire_tunnel_source";
    if !require_modules(test, &[RECEIVER]) || !require_pw_modules(test, &[PW_SENDER]) {
        return;
    }
    let _g = serial();
    let port = free_port();
    let receiver = pa_receiver(port, 6, "surround-51");
    let _tones = play(receiver.command("pacat"), "surround", "surround-51", &F51);
    let pw = PipeWire::builder()
        .name("pw-desktop")
        .module(
            PW_SENDER,
            &format!(
                "tunnel.mode = source server.address = \"tcp:127.0.0.1:{port}\" \
                 remote.source = \"surround.monitor\" audio.channels = 6 \
                 stream.props = {{ node.name = \"surr\" }}"
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_SENDER}: {e:#}"));
    let t0 = Instant::now();
    while pw.node_props("surr").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{test}: no node surr\n{}",
            pw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bitrate = pw
        .node_props("surr")
        .and_then(|p| p.get("compression.bitrate").cloned());
    assert_eq!(
        bitrate.as_deref(),
        Some("192000"),
        "{test}: default bitrate"
    );
    // parec asks for PulseAudio's surround-51 order; PipeWire maps the node's positions to it.
    let rec = record(pw.command("parec"), "surr", 6, "surround-51");
    let logs = || {
        format!(
            "--- pipewire ---\n{}\n--- receiver ---\n{}",
            pw.log(),
            receiver.log_tail(30)
        )
    };
    let took = expect_each_channel(test, &rec, &F51, Duration::from_secs(25), &logs);
    println!("{test}: every channel on its own after {took:?}");
    assert!(receiver.is_alive());
}
