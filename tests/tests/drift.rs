//! Clock drift between two real daemons: the sender's sink consumes at (1 + ppm·10⁻⁶) × its
//! nominal rate (`clock_skew_ppm`), and the receiver's drift-correcting playout must find the
//! skew, hold its latency at the target and play without underruns.
//!
//! Each case runs 60 s of audio (`OPUS_TUNNEL_DRIFT_SECS` overrides it).
use opus_tunnel_tests::prop_or_unknown;
use opus_tunnel_tests::{
    free_port, has_tone, play_loop, require_modules, serial, tone_loop, Daemon, Recorder,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `opus.tunnel.*` properties of the first sink-input of the receiver.
fn stream_props(d: &Daemon) -> HashMap<String, String> {
    let text = d.pactl_ok(&["list", "sink-inputs"]);
    let mut map = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.trim().split_once(" = ") {
            if k.starts_with("opus.tunnel.") && !map.contains_key(k) {
                map.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
    }
    map
}

fn num(p: &HashMap<String, String>, k: &str) -> f64 {
    p.get(k)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn run_case(skew_ppm: i32) {
    let _g = serial();
    if !require_modules(
        "drift",
        &["module-tunnel-sink-opus", "module-opus-protocol-tcp"],
    ) {
        return;
    }
    let secs: u64 = std::env::var("OPUS_TUNNEL_DRIFT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let port = free_port();
    let receiver = Daemon::receiver("drift-rx", port, "auth-anonymous=1 target_latency_msec=60");
    let sender = Daemon::named("drift-tx");
    sender
        .load_module(
            "module-tunnel-sink-opus",
            &format!("sink_name=tun server=tcp:127.0.0.1:{port} clock_skew_ppm={skew_ppm}"),
        )
        .expect("tunnel sink");
    let _player = play_loop(&sender, "tun", tone_loop(1000.0, 1500.0, -12.0));
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut underruns_at_10s = f64::NAN;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        let p = stream_props(&receiver);
        let t = start.elapsed().as_secs_f64();
        if t >= 10.0 && underruns_at_10s.is_nan() {
            underruns_at_10s = num(&p, "opus.tunnel.underruns");
        }
        samples.push((t, p));
    }
    let last = &samples.last().expect("samples").1;
    let drift = num(last, "opus.tunnel.drift_ppm");
    let target = num(last, "opus.tunnel.target_latency_usec");
    let underruns = num(last, "opus.tunnel.underruns");
    let tail: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= secs as f64 - 20.0)
        .map(|(_, p)| {
            num(p, "opus.tunnel.latency_usec") - num(p, "opus.tunnel.target_latency_usec")
        })
        .collect();
    let worst = tail.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    println!(
        "skew {skew_ppm:+} ppm over {secs} s: receiver drift_ppm {drift:.1}, target {:.1} ms, \
         latency error over the last 20 s at most {:.2} ms, underruns {underruns} ({underruns_at_10s} at 10 s)",
        target / 1000.0,
        worst / 1000.0
    );
    for (t, p) in samples.iter().step_by(3) {
        println!(
            "  t={t:5.1} s drift {:>8} ppm latency {:>6} us target {:>6} us state {} \
             plc {} late {} overruns {}",
            prop_or_unknown(p, "opus.tunnel.drift_ppm"),
            prop_or_unknown(p, "opus.tunnel.latency_usec"),
            prop_or_unknown(p, "opus.tunnel.target_latency_usec"),
            prop_or_unknown(p, "opus.tunnel.state"),
            prop_or_unknown(p, "opus.tunnel.plc_frames"),
            prop_or_unknown(p, "opus.tunnel.late_packets"),
            prop_or_unknown(p, "opus.tunnel.overruns"),
        );
    }
    // The sender produces (1 + skew) × real time: the receiver compresses (negative drift)
    // for a positive skew and stretches for a negative one.
    assert!(
        (drift.abs() - f64::from(skew_ppm.abs())).abs() <= 30.0,
        "drift {drift} ppm is not within 30 ppm of |{skew_ppm}|"
    );
    assert!(
        drift.signum() == -(f64::from(skew_ppm).signum()),
        "drift {drift} ppm has the wrong sign for a skew of {skew_ppm} ppm"
    );
    assert_eq!(
        underruns, underruns_at_10s,
        "underruns after the first 10 s"
    );
    assert!(
        worst <= 2000.0,
        "latency strayed {worst} us from the target in the last 20 s"
    );
    // And the audio is still the tone.
    let mut rec = Recorder::start(&receiver, "null.monitor");
    let audio = rec.read(2.0).expect("recording");
    assert!(
        has_tone(&audio, 1000.0, 1500.0, 5.0, 1.5),
        "the tone does not arrive at the right frequencies"
    );
}

#[test]
fn skew_plus_500_ppm() {
    run_case(500);
}

#[test]
fn skew_minus_500_ppm() {
    run_case(-500);
}
