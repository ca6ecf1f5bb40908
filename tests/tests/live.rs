//! Live control of a playing tunnel between two real daemons (issue 5):
//!
//! sender daemon: `module-tunnel-sink-opus sink_name=tun server=tcp:127.0.0.1:<proxy>`
//!   → CountingProxy → receiver daemon: `module-opus-protocol-tcp`, playing into its `null`
//!   sink; the tests record `null.monitor` there.
//!
//! Knobs change while audio plays, through PulseAudio's CLI (`update-sink-proplist`, what
//! `pacmd` sends), through `pactl send-message /opus_tunnel/tun ...` and through
//! `opus-tunnel-ctl`. Every test prints `SKIP: ...` and passes when the modules are not built.
//! Run one at a time: `cargo test -p opus-tunnel-tests --test live -- --test-threads=1`.

use opus_tunnel_tests::assert_prop;
use opus_tunnel_tests::daemon::tunnel_logs as logs;
use opus_tunnel_tests::signal::music_loop;
use opus_tunnel_tests::{begin_tunnel as begin, RECEIVER, SENDER};
use opus_tunnel_tests::{
    dropouts, free_port, play_loop, require_modules, rms_dbfs, serial, CountingProxy, Daemon,
    Dropout, Player, Recorder, RATE,
};
use rustfft::{num_complex::Complex, FftPlanner};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// RTP header (12 bytes) + RFC 4571 length (2 bytes) in front of every payload.
const PACKET_OVERHEAD: u64 = 14;
/// What an encrypted tunnel (the default) adds to each packet: the record's 2-byte length and
/// its 16-byte authentication tag.
const ENCRYPTION_OVERHEAD: u64 = 18;

/// Sender → proxy → receiver, tunnel sink `tun`.
struct Rig {
    receiver: Daemon,
    sender: Daemon,
    proxy: CountingProxy,
}

impl Rig {
    fn new(extra: &str) -> Rig {
        let port = free_port();
        let receiver = Daemon::receiver("receiver", port, "auth-anonymous=1");
        let proxy = CountingProxy::start(port);
        let sender = Daemon::named("sender");
        let args = format!(
            "sink_name=tun server=tcp:127.0.0.1:{} sink=null {extra}",
            proxy.port()
        );
        sender.load_module(SENDER, &args).unwrap_or_else(|e| {
            panic!(
                "load-module {SENDER} {args}: {e}\n{}",
                logs(&sender, &receiver)
            )
        });
        Rig {
            receiver,
            sender,
            proxy,
        }
    }

    fn logs(&self) -> String {
        logs(&self.sender, &self.receiver)
    }

    fn prop(&self, key: &str) -> Option<String> {
        self.sender.sink_properties("tun").ok()?.get(key).cloned()
    }

    /// Whether the tunnel runs encrypted (`opus.tunnel.encryption` names a Noise pattern).
    fn encrypted(&self) -> bool {
        self.prop("opus.tunnel.encryption")
            .is_some_and(|v| v.starts_with("Noise"))
    }

    fn prop_u64(&self, key: &str) -> u64 {
        let v = self.prop(key);
        v.as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("property {key} of tun: {v:?}{}", self.logs()))
    }

    /// `update-sink-proplist tun KEY=VALUE` through the CLI protocol.
    fn update(&self, key: &str, value: &str) {
        let out = self
            .sender
            .cli(&format!("update-sink-proplist tun {key}={value}"));
        assert!(
            !out.contains("No sink found") && !out.to_lowercase().contains("unknown command"),
            "update-sink-proplist tun {key}={value}: {out}"
        );
    }

    /// Polls until the property `key` reads `want`; how long it took, or `None` after
    /// `timeout`.
    fn wait_prop(&self, key: &str, want: &str, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        loop {
            if self.prop(key).as_deref() == Some(want) {
                return Some(t.elapsed());
            }
            if t.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Counters at the moment the module refreshes its statistics: waits (≤ 3 s) for
    /// `opus.tunnel.packets_sent` to change, then reads the proxy at once, so that the
    /// module's counters and the proxy's cover the same interval (to within a poll, ~30 ms).
    fn snapshot(&self) -> Snapshot {
        let first = self.prop_u64("opus.tunnel.packets_sent");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let props = self
                .sender
                .sink_properties("tun")
                .unwrap_or_else(|e| panic!("{e:#}"));
            let num = |k: &str| -> u64 {
                props
                    .get(k)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("property {k}: {:?}", props.get(k)))
            };
            let packets = num("opus.tunnel.packets_sent");
            if packets != first || Instant::now() > deadline {
                return Snapshot {
                    at: Instant::now(),
                    wire: self.proxy.bytes_to_server(),
                    packets,
                    bytes: num("opus.tunnel.bytes_sent"),
                    reconnects: num("opus.tunnel.reconnects"),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    /// Bytes the proxy forwarded to the receiver.
    wire: u64,
    /// `opus.tunnel.packets_sent`
    packets: u64,
    /// `opus.tunnel.bytes_sent`
    bytes: u64,
    reconnects: u64,
}

/// Rates between two snapshots.
#[derive(Debug, Clone, Copy)]
struct Rates {
    secs: f64,
    /// bit/s through the proxy (everything: framing, RTP, payload, RTCP).
    wire: f64,
    /// bit/s of codec payload: wire − 14 B per packet (32 B encrypted).
    payload: f64,
    /// packets per second (the module's count).
    packets: f64,
    /// bit/s by the module's own byte count.
    module: f64,
}

fn rates(a: &Snapshot, b: &Snapshot, encrypted: bool) -> Rates {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let overhead = PACKET_OVERHEAD + if encrypted { ENCRYPTION_OVERHEAD } else { 0 };
    let wire = (b.wire - a.wire) as f64;
    let packets = (b.packets - a.packets) as f64;
    Rates {
        secs,
        wire: wire * 8.0 / secs,
        payload: (wire - packets * overhead as f64) * 8.0 / secs,
        packets: packets / secs,
        module: (b.bytes - a.bytes) as f64 * 8.0 / secs,
    }
}

/// Waits (≤ 5 s) until the receiver's monitor carries signal (louder than -40 dBFS over
/// 100 ms), reading and throwing away 100 ms slices.
fn wait_for_signal(rig: &Rig, rec: &mut Recorder) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let s = rec.read(0.1).expect("record");
        let l: Vec<f32> = s.iter().map(|&v| v as f32 / 32768.0).collect();
        if rms_dbfs(&l) > -40.0 {
            return;
        }
    }
    panic!("no signal on the receiver within 5 s{}", rig.logs());
}

fn play_music(rig: &Rig, noise_dbfs: f64) -> Player {
    play_loop(&rig.sender, "tun", music_loop(2, -15.0, noise_dbfs))
}

/// Everything the recorder holds after `since` (minus 0.3 s not yet delivered).
fn read_since(rec: &mut Recorder, since: Instant) -> Vec<i16> {
    let secs = since.elapsed().as_secs_f64() - 0.3;
    rec.read(secs).expect("record")
}

/// Power per band of a mono signal: mean of Hann-windowed 4096-point periodograms (50%
/// overlap); returns the band's energy in dB (relative, comparable between calls with the
/// same length of input).
fn band_db(samples: &[f32], lo_hz: f64, hi_hz: f64) -> f64 {
    const N: usize = 4096;
    let fft = FftPlanner::new().plan_fft_forward(N);
    let window: Vec<f64> = (0..N)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N as f64).cos())
        .collect();
    let lo = (lo_hz * N as f64 / RATE as f64).ceil() as usize;
    let hi = ((hi_hz * N as f64 / RATE as f64).floor() as usize).min(N / 2);
    let mut total = 0.0;
    let mut count = 0;
    let mut start = 0;
    while start + N <= samples.len() {
        let mut buf: Vec<Complex<f64>> = samples[start..start + N]
            .iter()
            .zip(&window)
            .map(|(&s, &w)| Complex::new(s as f64 * w, 0.0))
            .collect();
        fft.process(&mut buf);
        total += buf[lo..=hi].iter().map(|c| c.norm_sqr()).sum::<f64>();
        count += 1;
        start += N / 2;
    }
    10.0 * (total / count.max(1) as f64 + 1e-30).log10()
}

fn mono(samples: &[i16]) -> Vec<f32> {
    samples
        .chunks_exact(2)
        .map(|f| (f[0] as f32 + f[1] as f32) / 65536.0)
        .collect()
}

/// The far end's audio recorded since `since` and its dropouts (≥ 5 ms, > 20 dB down),
/// printed with the test's time so far (from `t0`).
fn dropouts_since(test: &str, rec: &mut Recorder, since: Instant, t0: Instant) -> Vec<Dropout> {
    let audio = read_since(rec, since);
    let gaps = dropouts(&audio, 2);
    println!(
        "{test}: {:.1} s recorded across the changes; dropouts (≥ 5 ms, > 20 dB down): {gaps:?}; {:.1} s in all",
        audio.len() as f64 / 2.0 / RATE as f64,
        t0.elapsed().as_secs_f64()
    );
    gaps
}

/// A rig with `extra` sender arguments playing music at -30 dBFS and the far end recording
/// it: returns once the signal arrived and settled for 0.5 s, with the reconnect count then
/// and the recording so far thrown away.
fn music_through(extra: &str) -> (Rig, Recorder, Player, u64) {
    let rig = Rig::new(extra);
    let mut rec = Recorder::start(&rig.receiver, "null.monitor");
    let player = play_music(&rig, -30.0);
    wait_for_signal(&rig, &mut rec);
    std::thread::sleep(Duration::from_millis(500));
    let reconnects0 = rig.prop_u64("opus.tunnel.reconnects");
    rec.discard();
    (rig, rec, player, reconnects0)
}

/// Check 1: While music-like audio plays, `compression.bitrate` 128000 → 16000 → 64000 through
/// `update-sink-proplist`. For each: a ~5 s window starting ~1 s after the change.
///
/// "Within 15% of the new bitrate" is about the **payload** (what the Opus encoder was asked
/// for): wire bytes through the proxy minus 14 B (RTP header + RFC 4571 length; 32 B encrypted) per packet,
/// packets from `opus.tunnel.packets_sent` over the same interval. The wire itself carries
/// +5.6 kbit/s at 20 ms frames, +35% at 16 kbit/s, so a wire criterion would be about framing,
/// not about the knob. The wire rates are printed too.
///
/// Also: the reconnect count does not move, and the far end's recording, which spans all three
/// changes, has no gap longer than one frame (20 ms) by the harness's dropout detector.
#[test]
fn l1_bitrate_follows_live_changes() {
    let test = "l1_bitrate_follows_live_changes";
    let Some(_g) = begin(test) else { return };
    let t0 = Instant::now();
    // Constrained VBR: the check is that the rate follows the knob as a cap; at the default
    // (unconstrained VBR) the bitrate is a quality target (this music took +13 % at 64k).
    let (rig, mut rec, _player, reconnects0) =
        music_through("compression.bitrate=128000 compression.opus.vbr_constraint=true");
    let rec_start = Instant::now();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for target in [128_000u32, 16_000, 64_000] {
        rig.update("compression.bitrate", &target.to_string());
        assert!(
            rig.wait_prop(
                "compression.bitrate",
                &target.to_string(),
                Duration::from_secs(1)
            )
            .is_some(),
            "compression.bitrate did not read {target}{}",
            rig.logs()
        );
        std::thread::sleep(Duration::from_millis(800));
        let a = rig.snapshot();
        std::thread::sleep(Duration::from_millis(4800));
        let b = rig.snapshot();
        let r = rates(&a, &b, rig.encrypted());
        let err = (r.payload - target as f64) / target as f64;
        let line = format!(
            "{:>6} bit/s: payload {:.1} kbit/s ({:+.1}%), wire {:.1} kbit/s, module {:.1} kbit/s, {:.1} packets/s over {:.2} s; opus.tunnel.bitrate {:?}",
            target,
            r.payload / 1000.0,
            err * 100.0,
            r.wire / 1000.0,
            r.module / 1000.0,
            r.packets,
            r.secs,
            rig.prop("opus.tunnel.bitrate"),
        );
        println!("{test}: {line}");
        report.push(line.clone());
        if err.abs() > 0.15 {
            failures.push(line);
        }
        assert_eq!(
            b.reconnects,
            reconnects0,
            "reconnected after compression.bitrate={target}{}",
            rig.logs()
        );
    }
    let gaps = dropouts_since(test, &mut rec, rec_start, t0);
    let long: Vec<&Dropout> = gaps.iter().filter(|d| d.len_ms > 20.0).collect();
    assert!(
        long.is_empty(),
        "gaps longer than one frame (20 ms): {long:?}{}",
        rig.logs()
    );
    assert!(
        failures.is_empty(),
        "payload rate not within 15% of compression.bitrate:\n{}\n(all: {report:#?}){}",
        failures.join("\n"),
        rig.logs()
    );
}

/// Check 2: `compression.frame_size` 20 → 5 → 20 live: the packet rate on the wire follows (50/s,
/// 200/s, 50/s within 10%, from `opus.tunnel.packets_sent` over ~3 s windows starting ~1 s
/// after each change), no reconnect, and the far end's recording across the changes has no
/// dropout at all.
#[test]
fn l2_frame_size_follows_live_changes() {
    let test = "l2_frame_size_follows_live_changes";
    let Some(_g) = begin(test) else { return };
    let t0 = Instant::now();
    let (rig, mut rec, _player, reconnects0) = music_through("");
    let rec_start = Instant::now();
    let mut failures = Vec::new();
    for (ms, want) in [("20", 50.0), ("5", 200.0), ("20", 50.0)] {
        rig.update("compression.frame_size", ms);
        assert!(
            rig.wait_prop("compression.frame_size", ms, Duration::from_secs(1))
                .is_some(),
            "compression.frame_size did not read {ms}{}",
            rig.logs()
        );
        std::thread::sleep(Duration::from_millis(800));
        let a = rig.snapshot();
        std::thread::sleep(Duration::from_millis(2800));
        let b = rig.snapshot();
        let r = rates(&a, &b, rig.encrypted());
        println!(
            "{test}: frame_size {ms} ms: {:.1} packets/s (expected {want}), wire {:.1} kbit/s, payload {:.1} kbit/s, over {:.2} s",
            r.packets,
            r.wire / 1000.0,
            r.payload / 1000.0,
            r.secs
        );
        if (r.packets - want).abs() > 0.1 * want {
            failures.push(format!(
                "{ms} ms: {:.1} packets/s, expected {want}",
                r.packets
            ));
        }
        assert_eq!(
            b.reconnects,
            reconnects0,
            "reconnected after compression.frame_size={ms}{}",
            rig.logs()
        );
    }
    let gaps = dropouts_since(test, &mut rec, rec_start, t0);
    assert!(failures.is_empty(), "{failures:?}{}", rig.logs());
    assert!(
        gaps.is_empty(),
        "dropouts across the frame-size changes: {gaps:?}{}",
        rig.logs()
    );
}

/// Check 3: `compression.opus.max_bandwidth=narrowband` live: with white noise (-20 dBFS) under the
/// chord, the energy of the received audio above 4 kHz (4–20 kHz) falls by more than 30 dB
/// (3 s before against 3 s starting 1 s after the change; Welch periodograms).
#[test]
fn l3_narrowband_cuts_high_frequencies() {
    let test = "l3_narrowband_cuts_high_frequencies";
    let Some(_g) = begin(test) else { return };
    let rig = Rig::new("");
    let mut rec = Recorder::start(&rig.receiver, "null.monitor");
    let _player = play_music(&rig, -20.0);
    wait_for_signal(&rig, &mut rec);
    rec.read(0.5).expect("record");
    let before = mono(&rec.read(3.0).expect("record"));
    rig.update("compression.opus.max_bandwidth", "narrowband");
    assert!(
        rig.wait_prop(
            "compression.opus.max_bandwidth",
            "narrowband",
            Duration::from_secs(1)
        )
        .is_some(),
        "max_bandwidth did not read narrowband{}",
        rig.logs()
    );
    rec.discard();
    rec.read(1.0).expect("record");
    let after = mono(&rec.read(3.0).expect("record"));
    let hf = (
        band_db(&before, 4000.0, 20000.0),
        band_db(&after, 4000.0, 20000.0),
    );
    let hf45 = (
        band_db(&before, 4500.0, 20000.0),
        band_db(&after, 4500.0, 20000.0),
    );
    let lf = (
        band_db(&before, 100.0, 3500.0),
        band_db(&after, 100.0, 3500.0),
    );
    println!(
        "{test}: energy 4-20 kHz {:.1} → {:.1} dB (drop {:.1} dB); 4.5-20 kHz drop {:.1} dB; 0.1-3.5 kHz {:.1} → {:.1} dB; levels {:.1} → {:.1} dBFS",
        hf.0,
        hf.1,
        hf.0 - hf.1,
        hf45.0 - hf45.1,
        lf.0,
        lf.1,
        rms_dbfs(&before),
        rms_dbfs(&after)
    );
    assert!(
        hf.0 - hf.1 > 30.0,
        "energy above 4 kHz fell by only {:.1} dB{}",
        hf.0 - hf.1,
        rig.logs()
    );
    assert!(
        (lf.0 - lf.1).abs() < 3.0,
        "the band below 3.5 kHz changed by {:.1} dB: is the audio still there?",
        lf.0 - lf.1
    );
}

/// Check 4: `compression.opus.complexity=11` is refused: the sender's log names the key (`tun:
/// refused compression.opus.complexity: "11" is not accepted (...)`) and the property reads
/// the effective value, 10, again within 1 s.
#[test]
fn l4_bad_value_refused_and_restored() {
    let test = "l4_bad_value_refused_and_restored";
    let Some(_g) = begin(test) else { return };
    let rig = Rig::new("");
    assert_eq!(
        rig.prop("compression.opus.complexity").as_deref(),
        Some("10")
    );
    let mark = rig.sender.log_mark();
    rig.update("compression.opus.complexity", "11");
    let restored = rig
        .wait_prop("compression.opus.complexity", "10", Duration::from_secs(1))
        .unwrap_or_else(|| {
            panic!(
                "compression.opus.complexity reads {:?}, not 10, 1 s after =11{}",
                rig.prop("compression.opus.complexity"),
                rig.logs()
            )
        });
    // The log line may land a moment after the property.
    let deadline = Instant::now() + Duration::from_secs(2);
    let line = loop {
        let log = rig.sender.log_since(mark);
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("refused compression.opus.complexity"))
        {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line refusing compression.opus.complexity:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("{test}: property back to 10 after {restored:?}; log: {line}");
    assert!(
        line.contains("\"11\"") && line.contains("0 to 10"),
        "the log line should quote the value and the range: {line}"
    );
}

fn send_message(d: &Daemon, path: &str, msg: &str, params: &str) -> String {
    let out = d.pactl(&["send-message", path, msg, params]);
    assert!(
        out.status.success(),
        "pactl send-message {path} {msg} {params:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parse_kv(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Check 5: `pactl send-message /opus_tunnel/tun set ...` → `ok`; `get` and the sink properties
/// show the new values; a bad value → `error: ...` naming the key and range, nothing changes;
/// `/core list-handlers` lists the handler.
#[test]
fn l5_send_message_set_get() {
    let test = "l5_send_message_set_get";
    let Some(_g) = begin(test) else { return };
    let rig = Rig::new("");
    let handlers = send_message(&rig.sender, "/core", "list-handlers", "");
    assert!(
        handlers.contains("/opus_tunnel/tun"),
        "list-handlers: {handlers}"
    );
    let ok = send_message(
        &rig.sender,
        "/opus_tunnel/tun",
        "set",
        "compression.bitrate=32000 compression.opus.complexity=5",
    );
    assert_eq!(ok.trim(), "ok", "set answered {ok:?}{}", rig.logs());
    let got = parse_kv(&send_message(&rig.sender, "/opus_tunnel/tun", "get", ""));
    assert_prop(&got, "compression.bitrate", "32000");
    assert_prop(&got, "compression.opus.complexity", "5");
    for key in ["compression", "compression.frame_size", "opus.tunnel.state"] {
        assert!(got.contains_key(key), "get lacks {key}: {got:?}");
    }
    assert_eq!(rig.prop("compression.bitrate").as_deref(), Some("32000"));
    assert_eq!(
        rig.prop("compression.opus.complexity").as_deref(),
        Some("5")
    );

    let err = send_message(
        &rig.sender,
        "/opus_tunnel/tun",
        "set",
        "compression.opus.complexity=11",
    );
    println!(
        "{test}: get: {} keys; error case: {}",
        got.len(),
        err.trim()
    );
    assert!(
        err.starts_with("error: ")
            && err.contains("compression.opus.complexity")
            && err.contains("0 to 10"),
        "bad set answered {err:?}"
    );
    let unknown = send_message(&rig.sender, "/opus_tunnel/tun", "set", "bogus.key=1");
    assert!(
        unknown.starts_with("error: ") && unknown.contains("bogus.key"),
        "unknown key answered {unknown:?}"
    );
    let got = parse_kv(&send_message(&rig.sender, "/opus_tunnel/tun", "get", ""));
    assert_eq!(
        got.get("compression.opus.complexity").map(String::as_str),
        Some("5"),
        "a refused set changed the knob"
    );
    assert_eq!(
        rig.prop("compression.opus.complexity").as_deref(),
        Some("5")
    );
}

/// The built `opus-tunnel-ctl` (`cargo build --release -p opus-tunnel-ctl`, which
/// `scripts/test.sh` does first): `$OPUS_TUNNEL_CTL`, else `target/release` or
/// `target/debug` of the workspace (or `$CARGO_TARGET_DIR`).
fn ctl_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPUS_TUNNEL_CTL") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace")
                .join("target")
        });
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("opus-tunnel-ctl"))
        .find(|p| p.is_file())
}

fn ctl(d: &Daemon, bin: &Path, args: &[&str]) -> (bool, String, String) {
    let out = d
        .command(bin.to_str().expect("utf-8 path"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Check 6: `opus-tunnel-ctl` against a daemon: `status` lists `tun` with its state and server;
/// `set tun bitrate=32k` changes `compression.bitrate`; `set tun complexity=11` exits non-zero
/// with the module's reason; `get tun` prints the knobs.
#[test]
fn l6_opus_tunnel_ctl() {
    let test = "l6_opus_tunnel_ctl";
    if !require_modules(test, &[SENDER, RECEIVER]) {
        return;
    }
    let Some(bin) = ctl_binary() else {
        println!(
            "SKIP: {test}: opus-tunnel-ctl not built (cargo build --release -p opus-tunnel-ctl)"
        );
        assert!(
            std::env::var_os("OPUS_TUNNEL_REQUIRE_MODULES").map_or(true, |v| v != "1"),
            "{test}: opus-tunnel-ctl not built and OPUS_TUNNEL_REQUIRE_MODULES=1"
        );
        return;
    };
    let _g = serial();
    let rig = Rig::new("");
    let mut rec = Recorder::start(&rig.receiver, "null.monitor");
    let _player = play_music(&rig, -30.0);
    wait_for_signal(&rig, &mut rec);
    drop(rec);
    rig.wait_prop("opus.tunnel.state", "streaming", Duration::from_secs(3));
    // Two refreshes of the statistics, so that they cover playback.
    std::thread::sleep(Duration::from_millis(2100));

    let (ok, out, err) = ctl(&rig.sender, &bin, &["status"]);
    println!("{test}: status:\n{out}{err}");
    assert!(ok, "status failed: {err}");
    assert!(
        out.contains("tun") && out.contains("streaming") && out.contains("127.0.0.1"),
        "status should list tun, streaming, with its server: {out}"
    );
    let kbits: f64 = out
        .split_once(" kbit/s on the wire")
        .and_then(|(head, _)| head.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no bitrate in the status: {out}"));
    // At the default, unconstrained VBR, this music takes ~78-83 kbit/s on the wire at 64k
    // (constrained: 70).
    assert!(
        (40.0..100.0).contains(&kbits),
        "status shows {kbits} kbit/s on the wire while 64 kbit/s Opus plays: {out}"
    );

    let (ok, out, err) = ctl(&rig.sender, &bin, &["set", "tun", "bitrate=32k"]);
    assert!(ok, "set tun bitrate=32k failed: {out}{err}");
    assert_eq!(
        rig.prop("compression.bitrate").as_deref(),
        Some("32000"),
        "after set tun bitrate=32k{}",
        rig.logs()
    );

    let (ok, out, err) = ctl(&rig.sender, &bin, &["set", "tun", "complexity=11"]);
    println!("{test}: set tun complexity=11 → ok={ok}: {out}{err}");
    assert!(!ok, "set tun complexity=11 succeeded: {out}");
    assert!(
        err.contains("compression.opus.complexity") && err.contains("0 to 10"),
        "the reason should name the key and range: {err}"
    );
    assert_eq!(
        rig.prop("compression.opus.complexity").as_deref(),
        Some("10")
    );

    let (ok, out, err) = ctl(&rig.sender, &bin, &["set", "tun", "loudness=3"]);
    assert!(
        !ok && err.contains("bitrate"),
        "unknown friendly name: {out}{err}"
    );

    let (ok, out, err) = ctl(&rig.sender, &bin, &["get", "tun"]);
    assert!(ok, "get tun failed: {err}");
    assert!(out.contains("compression.bitrate=32000"), "get tun: {out}");

    let (ok, _, err) = ctl(&rig.sender, &bin, &["get", "nosuchsink"]);
    assert!(!ok, "get of a missing sink succeeded");
    println!("{test}: get nosuchsink: {}", err.trim());
}
