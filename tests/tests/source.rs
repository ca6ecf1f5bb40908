//! The microphone direction: `module-tunnel-source-opus` on the desktop daemon records the
//! receiving daemon's source through `module-opus-protocol-tcp`. The "microphone" is the
//! receiver's null sink monitor with a 700 Hz tone playing into it: it delivers audio in
//! steady small blocks like a sound card. (`module-sine-source` does not: it posts up to 2 s
//! at once when a reader arrives, which no drift-correcting buffer of 60 ms can smooth.)
use opus_tunnel_tests::assert_prop;
use opus_tunnel_tests::begin;
use opus_tunnel_tests::encrypted_wire_rate;
use opus_tunnel_tests::{
    free_port, left_tone, play_loop, tone_loop, CountingProxy, Daemon, Player, Recorder,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const MODULES: &[&str] = &["module-tunnel-source-opus", "module-opus-protocol-tcp"];

struct Setup {
    receiver: Daemon,
    desktop: Daemon,
    proxy: CountingProxy,
    _mic: Player,
}

/// The stand-in microphone's source on the receiver.
const MIC: &str = "null.monitor";

fn receiver_lines(port: u16) -> Vec<String> {
    vec![
        format!("set-default-source {MIC}"),
        format!(
            "load-module module-opus-protocol-tcp port={port} listen=127.0.0.1 auth-anonymous=1"
        ),
    ]
}

fn mic_tone(receiver: &Daemon) -> Player {
    play_loop(receiver, "null", tone_loop(700.0, 700.0, -6.0))
}

fn setup(mic_args: &str) -> Setup {
    let port = free_port();
    let mut b = Daemon::builder().name("mic-rx");
    for l in receiver_lines(port) {
        b = b.line(l);
    }
    let receiver = b.start().expect("receiver");
    let mic = mic_tone(&receiver);
    let desktop = Daemon::named("mic-desktop");
    let proxy = CountingProxy::start(port);
    desktop
        .load_module(
            "module-tunnel-source-opus",
            &format!(
                "source_name=mic server=tcp:127.0.0.1:{} {mic_args}",
                proxy.port()
            ),
        )
        .expect("tunnel source");
    Setup {
        receiver,
        desktop,
        proxy,
        _mic: mic,
    }
}

fn source_props(d: &Daemon, name: &str) -> HashMap<String, String> {
    d.source_properties(name).unwrap_or_else(|e| panic!("{e}"))
}

fn num(p: &HashMap<String, String>, k: &str) -> f64 {
    p.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Our record streams on the receiver (the background reader is not one).
fn tunnel_outputs(d: &Daemon) -> usize {
    d.pactl_ok(&["list", "source-outputs"])
        .matches("module-opus-protocol-tcp")
        .count()
}

#[test]
fn m1_tone_from_the_remote_microphone() {
    let Some(_g) = begin("m1", MODULES) else {
        return;
    };
    let s = setup("");
    let direct = Recorder::start(&s.receiver, MIC).read(2.0).expect("direct");
    let (f0, l0) = left_tone(&direct);
    let mut rec = Recorder::start(&s.desktop, "mic");
    let _ = rec.read(3.0).expect("warm-up");
    let audio = rec.read(3.0).expect("recording");
    let (f, l) = left_tone(&audio);
    println!(
        "remote microphone: {f:.1} Hz at {l:.2} dBFS (at the source: {f0:.1} Hz at {l0:.2} dBFS)"
    );
    assert!((f - 700.0).abs() <= 5.0, "frequency {f}");
    assert!(
        (l - l0).abs() <= 1.0,
        "level {l} dBFS vs {l0} at the source"
    );
    assert_eq!(
        tunnel_outputs(&s.receiver),
        1,
        "one recording stream while we read"
    );
}

#[test]
fn m2_nothing_recorded_or_sent_without_readers() {
    let Some(_g) = begin("m2", MODULES) else {
        return;
    };
    let s = setup("");
    // Read once, stop, and check the far end stops too.
    {
        let mut rec = Recorder::start(&s.desktop, "mic");
        let _ = rec.read(1.0).expect("recording");
    }
    std::thread::sleep(Duration::from_secs(2));
    let b0 = s.proxy.bytes_to_client() + s.proxy.bytes_to_server();
    std::thread::sleep(Duration::from_secs(10));
    let idle = s.proxy.bytes_to_client() + s.proxy.bytes_to_server() - b0;
    let outputs = tunnel_outputs(&s.receiver);
    let state = source_props(&s.desktop, "mic")
        .get("opus.tunnel.state")
        .cloned()
        .unwrap_or_default();
    println!("no reader: {idle} bytes in 10 s on the wire, {outputs} recording streams at the far end, state {state}");
    assert!(idle < 2048, "{idle} bytes crossed the wire in 10 s");
    assert_eq!(outputs, 0, "the far end still records");
    assert_eq!(state, "idle", "opus.tunnel.state with no reader");
}

#[test]
fn m3_bitrate_changes_live() {
    let Some(_g) = begin("m3", MODULES) else {
        return;
    };
    // Constant bitrate, so that the wire shows the knob exactly (VBR spends less on a sine).
    let s = setup("compression.bitrate=32000 compression.opus.vbr=false");
    let mut rec = Recorder::start(&s.desktop, "mic");
    let _ = rec.read(2.0).expect("warm-up");
    let rate_over = |rec: &mut Recorder, secs: f64| {
        let b0 = s.proxy.bytes_to_client();
        let t0 = Instant::now();
        let _ = rec.read(secs).expect("recording");
        (s.proxy.bytes_to_client() - b0) as f64 * 8.0 / t0.elapsed().as_secs_f64()
    };
    let before = rate_over(&mut rec, 5.0);
    let reconnects0 = num(&source_props(&s.desktop, "mic"), "opus.tunnel.reconnects");
    s.desktop
        .cli("update-source-proplist mic compression.bitrate=16000");
    let _ = rec.read(1.0).expect("settle");
    let after = rate_over(&mut rec, 5.0);
    let p = source_props(&s.desktop, "mic");
    // The wire carries 32 bytes of RTP, framing and encryption per 20 ms packet: +12.8 kbit/s.
    let expect = encrypted_wire_rate(16_000.0);
    println!(
        "wire from the far end: {:.1} kbit/s at 32k, {:.1} kbit/s after update-source-proplist \
         compression.bitrate=16000 (expected {:.1}); property {}",
        before / 1000.0,
        after / 1000.0,
        expect / 1000.0,
        p.get("compression.bitrate").cloned().unwrap_or_default()
    );
    assert!((after - expect).abs() / expect <= 0.15, "wire rate {after}");
    assert_prop(&p, "compression.bitrate", "16000");
    assert_eq!(
        num(&p, "opus.tunnel.reconnects"),
        reconnects0,
        "it reconnected"
    );
    // The tone stays right: read 1 s slices until it is (up to 8 s), and print how long that
    // took (the playout engine has no watchdog that restarts it any more: the first slice is
    // expected to be right).
    let t0 = Instant::now();
    let mut f = 0.0;
    while t0.elapsed() < Duration::from_secs(8) {
        let audio = rec.read(1.0).expect("recording");
        f = left_tone(&audio).0;
        if (f - 700.0).abs() <= 5.0 {
            break;
        }
    }
    println!(
        "tone at {f:.1} Hz {:.1} s after the measurement",
        t0.elapsed().as_secs_f64()
    );
    assert!((f - 700.0).abs() <= 5.0, "frequency {f} after the change");
}

#[test]
fn m4_receiver_restart_while_recording() {
    let Some(_g) = begin("m4", MODULES) else {
        return;
    };
    let mut s = setup("");
    let mut rec = Recorder::start(&s.desktop, "mic");
    let _ = rec.read(2.0).expect("warm-up");
    s.receiver.kill();
    // Wait until the tunnel source has run dry (what was buffered has played).
    let t_gone = Instant::now();
    loop {
        let audio = rec.read(0.5).expect("recording");
        let (_, l) = left_tone(&audio);
        if l < -40.0 {
            break;
        }
        assert!(
            t_gone.elapsed() < Duration::from_secs(5),
            "the tone did not stop"
        );
    }
    s.receiver.restart().expect("restart");
    s._mic = mic_tone(&s.receiver);
    let t0 = Instant::now();
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(10) {
        let audio = rec.read(0.5).expect("recording");
        let (f, l) = left_tone(&audio);
        if (f - 700.0).abs() <= 5.0 && l > -40.0 {
            back = Some(t0.elapsed());
            break;
        }
    }
    let back = back.expect("the tone did not come back within 10 s");
    println!(
        "receiver restarted: the tone is back after {:.2} s",
        back.as_secs_f64()
    );
    assert!(back <= Duration::from_secs(5), "took {back:?}");
}

fn skew_case(ppm: i32) {
    let Some(_g) = begin("m5", MODULES) else {
        return;
    };
    let secs: u64 = std::env::var("OPUS_TUNNEL_DRIFT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let s = setup(&format!("clock_skew_ppm={ppm}"));
    let mut rec = Recorder::start(&s.desktop, "mic");
    let start = Instant::now();
    let mut at10 = f64::NAN;
    let mut last = HashMap::new();
    while start.elapsed() < Duration::from_secs(secs) {
        let _ = rec.read(1.0).expect("recording");
        last = source_props(&s.desktop, "mic");
        if start.elapsed() >= Duration::from_secs(10) && at10.is_nan() {
            at10 = num(&last, "opus.tunnel.underruns");
        }
    }
    let drift = num(&last, "opus.tunnel.drift_ppm");
    let under = num(&last, "opus.tunnel.underruns");
    let err =
        num(&last, "opus.tunnel.latency_usec") - num(&last, "opus.tunnel.target_latency_usec");
    println!(
        "tunnel source at {ppm:+} ppm over {secs} s: drift {drift:.1} ppm, underruns {under} ({at10} at 10 s), latency - target {:.2} ms",
        err / 1000.0
    );
    assert!(
        (drift.abs() - f64::from(ppm.abs())).abs() <= 30.0,
        "drift {drift}"
    );
    assert_eq!(under, at10, "underruns after the first 10 s");
}

#[test]
fn m5_skew_plus_500_ppm() {
    skew_case(500);
}

#[test]
fn m6_skew_minus_500_ppm() {
    skew_case(-500);
}

/// A stall of the whole host (both daemons stopped at once, their clocks running on, as a busy
/// hypervisor does it): the far end's catch-up audio and the tunnel source's catch-up posts
/// wake together. The source waits for the late audio instead of posting silence in its place.
#[test]
fn m7_host_stalls_post_late_not_silent() {
    let Some(_g) = begin("m7", MODULES) else {
        return;
    };
    // A fixed target: a stall's concealment would raise an adaptive one, and the stalls
    // after the first would prove nothing.
    let s = setup("target_latency_msec=30");
    let mut rec = Recorder::start(&s.desktop, "mic");
    let _ = rec.read(6.0).expect("warm-up");
    let before = num(&source_props(&s.desktop, "mic"), "opus.tunnel.underruns");
    let pids = [s.receiver.pid(), s.desktop.pid()];
    for ms in [20, 30, 20, 30] {
        opus_tunnel_tests::process::stall(&pids, Duration::from_millis(ms));
        let audio = rec.read(2.0).expect("recording");
        let (f, l) = left_tone(&audio);
        assert!(
            (f - 700.0).abs() <= 5.0 && (l + 6.0).abs() <= 1.0,
            "{f} Hz at {l} dBFS"
        );
    }
    let p = source_props(&s.desktop, "mic");
    let after = num(&p, "opus.tunnel.underruns");
    println!(
        "four stalls of 20-30 ms: underruns {before} before, {after} after; {} frames concealed; target {} µs",
        num(&p, "opus.tunnel.plc_frames"),
        num(&p, "opus.tunnel.target_latency_usec")
    );
    assert_eq!(after, before, "underruns across the stalls");
}

/// Amplitude of the `hz` component of the left channel (stereo s16) in 5 ms windows.
fn tone_envelope(audio: &[i16], hz: f64) -> Vec<f64> {
    let left: Vec<f64> = audio.iter().step_by(2).map(|&v| f64::from(v)).collect();
    let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
    left.chunks_exact(240)
        .enumerate()
        .map(|(k, c)| {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, v) in c.iter().enumerate() {
                let ph = w * (k * 240 + i) as f64;
                re += v * ph.cos();
                im += v * ph.sin();
            }
            2.0 * re.hypot(im) / c.len() as f64
        })
        .collect()
}

/// A tone that starts playing into the far end's source while the tunnel source records it
/// keeps its level: in four starts, no 5 ms window more than 1 dB off the tone's median
/// (the tone's fades left out). Until 2026-12-07 it failed: where the engine concealed a late
/// packet and then decoded it, the decoder (told of a loss, in speech mode) played the next
/// ~250 ms wrong — a dip of 10–13 dB, then a beat of ±5 dB dying away; the decoder's
/// concealment of late audio now runs on a twin of it (`codec::Decoder::conceal`). Run by hand
/// (`--ignored`): a 1 dB window over 32 s of tone also catches what a stall of a busy host
/// conceals, so it is not in CI.
#[test]
#[ignore = "by hand: a 1 dB check that a host's stall can break (see its doc)"]
fn m8_a_tone_that_starts_while_recording_keeps_its_level() {
    let Some(_g) = begin("m8", MODULES) else {
        return;
    };
    let port = free_port();
    let mut b = Daemon::builder().name("m8-rx");
    for l in receiver_lines(port) {
        b = b.line(l);
    }
    let receiver = b.start().expect("receiver");
    let desktop = Daemon::named("m8-desktop");
    desktop
        .load_module(
            "module-tunnel-source-opus",
            &format!("source_name=mic server=tcp:127.0.0.1:{port}"),
        )
        .expect("tunnel source");
    let file = receiver.dir().join("tone.raw");
    opus_tunnel_tests::signal::write_s16le(
        &file,
        &opus_tunnel_tests::signal::tone(&[1000.0, 1000.0], -12.0, 8.0),
    )
    .expect("tone file");
    let mut broken = Vec::new();
    for run in 0..4 {
        let mut rec = Recorder::start(&desktop, "mic");
        std::thread::sleep(Duration::from_secs(1));
        // pacat at its default buffer, as a player would.
        let mut pacat = receiver.command("pacat");
        pacat.args([
            "--playback",
            "--raw",
            "--format=s16le",
            "--rate=48000",
            "--channels=2",
            "-d",
            "null",
        ]);
        let mut child = pacat
            .stdin(std::fs::File::open(&file).expect("tone file"))
            .spawn()
            .expect("pacat");
        let audio = rec.read(10.0).expect("recording");
        let _ = child.wait();
        let env = tone_envelope(&audio, 1000.0);
        let loud: Vec<usize> = (0..env.len()).filter(|&k| env[k] > 2000.0).collect();
        let (Some(&a), Some(&b)) = (loud.first(), loud.last()) else {
            panic!("run {run}: no tone recorded");
        };
        let mut levels: Vec<f64> = env[a..=b].to_vec();
        levels.sort_by(f64::total_cmp);
        let level = levels[levels.len() / 2];
        // Off by more than 1 dB, away from the tone's 5 ms fades.
        let off: Vec<String> = (a + 4..b.saturating_sub(4))
            .filter(|&k| (20.0 * (env[k] / level).log10()).abs() > 1.0)
            .map(|k| {
                format!(
                    "{:.3} s: {:+.1} dB",
                    (k - a) as f64 * 0.005,
                    20.0 * (env[k] / level).log10()
                )
            })
            .collect();
        println!(
            "run {run}: {} of {} 5 ms windows more than 1 dB off the tone's level: {off:?}",
            off.len(),
            b - a
        );
        if !off.is_empty() {
            broken.push(run);
        }
        drop(rec);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(broken.is_empty(), "runs with a broken level: {broken:?}");
}
