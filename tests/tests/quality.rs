//! Issue 17's regression test: speech through a real tunnel at the module's defaults scores
//! (PESQ-WB) within 0.15 of the same speech through opusenc/opusdec at their defaults with the
//! same bitrate and frame size, with not one dropout, from the first word after the tunnel
//! loads.
//!
//! sender daemon: `module-tunnel-sink-opus sink_name=tun server=tcp:127.0.0.1:<port>` →
//! receiver daemon: `module-opus-protocol-tcp port=<port>` playing into its `null` sink,
//! recorded from `null.monitor`. The speech (espeak-ng, ~16 s, the benchmarks' signal), the
//! opusenc round trip and the scoring (alignment, PESQ-WB via PyPI `pesq`, dropouts tracked at
//! each 0.5 s segment's own lag, the receiver's time stretch) come from
//! `scripts/quality_matrix.py`; `scripts/quality.sh --setup` installs espeak-ng, opus-tools
//! and the Python packages when they are missing. `QUALITY_PYTHON` names another Python.
//!
//! The tunnel runs at the module's defaults (64 kbit/s, 20 ms, complexity 10, unconstrained
//! VBR); the anchor is opusenc at the bitrate and frame size the tunnel sink reports.
//!
//! Four tests:
//! - `short_speech_as_received_within_margin_of_opusenc`: the contract as received, on the
//!   first two sentences (7 s of speech; about 20-25 s in all), with the playout's stretch
//!   bounded too: the short form meant for CI (not yet in `scripts/test.sh`);
//! - `speech_as_received_within_margin_of_opusenc`: all five sentences (16 s) as received,
//!   the whole contract;
//! - `speech_through_the_codec_within_margin_of_opusenc`: all five sentences, with the
//!   receiver's uniform time stretch undone before PESQ: the codec's share;
//! - `music_as_received_within_margin_of_opusenc`: the codec matrix's 8 s music-like signal
//!   as received, scored with ViSQOL v3 audio mode (PyPI `visqol-python`; PESQ is defined
//!   for speech only), within 0.15 of opusenc's, no dropout.
//!
//! `cargo test --release -p opus-tunnel-tests --test quality -- --nocapture --test-threads=1`
//! (about 30 s per test).

use opus_tunnel_tests::{free_port, play, require_modules, serial, write_s16le, Daemon, Recorder};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SENDER: &str = "module-tunnel-sink-opus";
const RECEIVER: &str = "module-opus-protocol-tcp";
/// How far below opusenc the tunnel may score (PESQ-WB).
const MARGIN: f64 = 0.15;
/// The short form's bound on the receiver's uniform time stretch (`stretch_ppm`, the median
/// slope of the lag from one active 0.5 s segment to the next: a step of the latency in a
/// pause is not a stretch). PESQ-WB forgives a stretch until the accumulated shift passes
/// roughly 8 ms and then falls off a cliff: opusenc's own output of the 16 s speech, stretched, scores the same
/// (±0.001) up to 500 ppm and 3.3-3.4 at 700-1000 ppm, where the 7 s clip loses only 0.03 at
/// 1000 ppm. So over 7 s PESQ alone would pass a playout that fails the 16 s contract; the
/// short form also holds the stretch to what the 16 s test tolerates.
const SHORT_MAX_STRETCH_PPM: f64 = 500.0;

fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The Python with numpy, scipy and pesq, set up by `scripts/quality.sh --setup` if needed.
fn python() -> PathBuf {
    let py = std::env::var_os("QUALITY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/bench-venv/bin/python"));
    let ready = Command::new(&py)
        .args(["-c", "import numpy, scipy, pesq, visqol"])
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("espeak-ng").arg("--version").output().is_ok()
        && Command::new("opusenc").arg("--version").output().is_ok();
    if !ready {
        let st = Command::new(root().join("scripts/quality.sh"))
            .arg("--setup")
            .status()
            .expect("running scripts/quality.sh --setup");
        assert!(st.success(), "scripts/quality.sh --setup failed");
    }
    py
}

/// Runs `scripts/quality_matrix.py ARGS` and returns its standard output.
fn helper(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg(root().join("scripts/quality_matrix.py"))
        .args(args)
        .output()
        .expect("running scripts/quality_matrix.py");
    assert!(
        out.status.success(),
        "quality_matrix.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The number after `"key": ` in the helper's one-line JSON.
fn json_num(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

fn score(
    py: &Path,
    reference: &Path,
    degraded: &Path,
    key: &str,
    visqol: bool,
) -> (f64, f64, String) {
    let mut args = vec![
        "score",
        reference.to_str().expect("path"),
        degraded.to_str().expect("path"),
    ];
    if visqol {
        args.push("visqol");
    }
    let j = helper(py, &args);
    let pesq = json_num(&j, key).unwrap_or_else(|| panic!("no {key}: {j}"));
    let dropouts = json_num(&j, "dropouts").unwrap_or_else(|| panic!("no dropouts: {j}"));
    (pesq, dropouts, j)
}

/// What goes through the tunnel.
#[derive(Clone, Copy)]
enum Signal {
    /// The speech (its first n sentences, or all five), scored with PESQ-WB.
    Speech(Option<usize>),
    /// The music-like signal (8 s: `quality_matrix.py music`), scored with ViSQOL v3 audio.
    Music,
}

/// Plays the signal into a tunnel loaded just before and scores it against opusenc's: as
/// received, or (`destretch`, speech only) with the uniform time stretch of the receiver's
/// playout rate undone first. With `max_stretch_ppm`, the fitted stretch is held to it too.
fn through_tunnel(test: &str, signal: Signal, destretch: bool, max_stretch_ppm: Option<f64>) {
    if !require_modules(test, &[SENDER, RECEIVER]) {
        return;
    }
    let _g = serial();
    let t0 = Instant::now();
    let py = python();
    let dir = std::env::temp_dir().join(format!("ot-quality-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let speech = dir.join("signal.raw");
    let path = speech.to_str().expect("path");
    let secs: f64 = match signal {
        Signal::Speech(sentences) => {
            let count = sentences.map(|n| n.to_string());
            let mut args = vec!["speech", path];
            args.extend(count.as_deref());
            helper(&py, &args).parse().expect("speech seconds")
        }
        Signal::Music => {
            helper(&py, &["music", path]);
            let bytes = std::fs::metadata(&speech).expect("music file").len();
            bytes as f64 / 4.0 / 48_000.0
        }
    };

    let port = free_port();
    let receiver = Daemon::builder()
        .name("receiver")
        .line(format!(
            "load-module {RECEIVER} port={port} listen=127.0.0.1 auth-anonymous=1 sink=null"
        ))
        .start()
        .unwrap_or_else(|e| panic!("receiver: {e:#}"));
    let sender = Daemon::builder()
        .name("sender")
        .start()
        .unwrap_or_else(|e| panic!("sender: {e:#}"));
    let mut rec = Recorder::start(&receiver, "null.monitor");
    // Every knob at its default.
    let args = format!("sink_name=tun server=tcp:127.0.0.1:{port} sink=null");
    sender
        .load_module(SENDER, &args)
        .unwrap_or_else(|e| panic!("load-module {SENDER} {args}: {e}"));
    let props = sender.sink_properties("tun").expect("tunnel properties");
    let prop = |k: &str| {
        props
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("tunnel sink has no {k}"))
    };
    let (bitrate, frame) = (prop("compression.bitrate"), prop("compression.frame_size"));
    // Speech is played at once: the first word after the tunnel loads must arrive too (it
    // starts with 0.5 s of silence). The music starts on its first sample: it waits for the
    // link (audio played while the link is down is dropped, as the README says), so that what
    // is scored is the codec and the playout, not that race.
    let t = Instant::now();
    if matches!(signal, Signal::Music) {
        while sender
            .sink_properties("tun")
            .ok()
            .and_then(|p| p.get("opus.tunnel.state").cloned())
            .map_or(true, |s| s == "connecting")
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the tunnel did not connect"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The recording runs since before the wait: it covers the wait too (once, in CI, the
    // music began 5.1 s into a 12 s recording and its end was cut off).
    let waited = t.elapsed().as_secs_f64();
    println!("{test}: {waited:.2} s from load to play");
    let mut player = play(&sender, "tun", &speech);
    let got = rec.read(secs + 4.0 + waited).expect("recording");
    assert!(player.wait(Duration::from_secs(10)), "pacat did not finish");
    // The receiver's own counters (underruns, concealed frames, late packets) for the log.
    let stats: Vec<String> = receiver
        .pactl_ok(&["list", "sink-inputs"])
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("opus.tunnel."))
        .map(str::to_string)
        .collect();
    println!("{test}: receiver: {}", stats.join("; "));
    let recorded = dir.join("tunnel.raw");
    write_s16le(&recorded, &got).expect("writing the recording");
    let (key, visqol) = match (signal, destretch) {
        (Signal::Music, _) => ("visqol_audio", true),
        (_, true) => ("pesq_wb_destretched", false),
        (_, false) => ("pesq_wb", false),
    };
    let (tunnel, dropouts, tj) = score(&py, &speech, &recorded, key, visqol);

    // The anchor: opusenc/opusdec at their defaults (complexity 10, unconstrained VBR) with
    // the tunnel's bitrate and frame size.
    let anchor = dir.join("opusenc.raw");
    let kbps = (bitrate.parse::<f64>().expect("bitrate") / 1000.0).to_string();
    helper(
        &py,
        &[
            "opusenc",
            speech.to_str().expect("path"),
            anchor.to_str().expect("path"),
            &kbps,
            &frame,
            "10",
            "vbr",
        ],
    );
    let (reference, _, rj) = score(&py, &speech, &anchor, key, visqol);
    let (vbr, cvbr, complexity) = (
        prop("compression.opus.vbr"),
        prop("compression.opus.vbr_constraint"),
        prop("compression.opus.complexity"),
    );
    println!(
        "{test}: {secs:.1} s of signal; bitrate {bitrate} frame {frame} ms complexity {complexity} \
         vbr {vbr} vbr_constraint {cvbr}: tunnel {key} {tunnel:.3} ({dropouts} dropouts), \
         opusenc {reference:.3}, difference {:.3}; {:.1} s\n tunnel: {tj}\n opusenc: {rj}",
        tunnel - reference,
        t0.elapsed().as_secs_f64()
    );
    let logs = || {
        format!(
            "\n--- sender log tail ---\n{}\n--- receiver log tail ---\n{}",
            sender.log_tail(30),
            receiver.log_tail(30)
        )
    };
    assert_eq!(
        dropouts,
        0.0,
        "dropouts in the tunnel's audio: {tj}{}",
        logs()
    );
    assert!(
        tunnel >= reference - MARGIN,
        "tunnel {key} {tunnel:.3} more than {MARGIN} below opusenc's {reference:.3}{}",
        logs()
    );
    if let Some(max) = max_stretch_ppm {
        let ppm = json_num(&tj, "stretch_ppm").unwrap_or_else(|| panic!("no stretch_ppm: {tj}"));
        assert!(
            ppm.abs() <= max,
            "the receiver's playout stretched the speech by {ppm:.0} ppm (at most {max} ppm: \
             over the 16 s speech more costs PESQ-WB 1.0){}",
            logs()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The short form of the contract, for CI: the first two sentences (a male and a female
/// voice, 7 s), played the moment the tunnel is loaded, as received: within 0.15 PESQ-WB of
/// opusenc, no dropout, and a playout stretch within `SHORT_MAX_STRETCH_PPM` (which 7 s of
/// PESQ alone would not catch).
#[test]
fn short_speech_as_received_within_margin_of_opusenc() {
    through_tunnel(
        "short_speech_as_received_within_margin_of_opusenc",
        Signal::Speech(Some(2)),
        false,
        Some(SHORT_MAX_STRETCH_PPM),
    );
}

/// The codec's share: all five sentences as received, with the receiver's uniform time
/// stretch undone before PESQ (its ppm is printed as `stretch_ppm`), within 0.15 of opusenc,
/// no dropout.
#[test]
fn speech_through_the_codec_within_margin_of_opusenc() {
    through_tunnel(
        "speech_through_the_codec_within_margin_of_opusenc",
        Signal::Speech(None),
        true,
        None,
    );
}

/// The whole contract, as received, on all 16 s of speech. (Ignored until playout v2: the
/// first engine played about 1000 ppm short after a start, which alone took PESQ-WB of this
/// speech 0.7-1.0 below opusenc; docs/benchmarks.md, "Codec quality matrix".)
#[test]
fn speech_as_received_within_margin_of_opusenc() {
    through_tunnel(
        "speech_as_received_within_margin_of_opusenc",
        Signal::Speech(None),
        false,
        None,
    );
}

/// Music (the 8 s music-like signal of the codec matrix: plucked notes, noise bursts, a chord
/// pad) as received, at the defaults: within 0.15 ViSQOL (v3 audio mode) of opusenc, no
/// dropout.
#[test]
fn music_as_received_within_margin_of_opusenc() {
    through_tunnel(
        "music_as_received_within_margin_of_opusenc",
        Signal::Music,
        false,
        None,
    );
}
