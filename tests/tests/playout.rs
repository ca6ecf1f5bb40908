//! The receive side's playout, end to end between real daemons (issue 16):
//!
//! - `p1`: click trains played into the tunnel sink at once after `load-module`, again after
//!   8 s of silence, and at once after a reconnect (the link cut at a proxy) all arrive, and
//!   the first click of each train is no later than the train's steady latency + 20 ms.
//! - `p2`: the tunnel source recording a source that posts 500 ms blocks (`module-pipe-source`
//!   fed 500 ms at a time) has the tone's frequency (±5 Hz) and level (±1 dB) within 2 s of a
//!   reader starting, and no new underruns while three readers come and go.
//! - `p3`: render-to-render latency at defaults, sender sink to receiver sink (not pacat to
//!   parec), and the latency the tunnel sink reports (`pactl list sinks`). The figures are
//!   always measured and printed; the goals (≤ 40 ms, readings within 1 ms of each other and
//!   within 5 ms of the measured figure) are asserted only with `OPUS_TUNNEL_PLAYOUT_V2=1`
//!   until the new engine lands.
//!
//! How times are measured is in `opus_tunnel_tests::timed`.
use opus_tunnel_tests::daemon::tunnel_logs;
use opus_tunnel_tests::linkcheck::stream_props;
use opus_tunnel_tests::signal::{play_loop, tone_loop};
use opus_tunnel_tests::timed::{play_train, sink_latency_usec, Origin, Recording, TimedRecorder};
use opus_tunnel_tests::{
    begin, begin_tunnel, channel, dominant_frequency, free_port, rms_dbfs, CountingProxy, Daemon,
    Recorder,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clicks per train, and their spacing in 10 ms blocks (0.5 s: longer than any latency, so
/// that a click cannot be taken for the one before it).
const CLICKS: usize = 8;
const SPACING: usize = 50;
/// A received sample above this (s16) is loud; a click's onset comes after 50 ms of quiet.
const LOUD: i16 = 4000;
const QUIET: usize = 2400;

fn goals_asserted() -> bool {
    std::env::var_os("OPUS_TUNNEL_PLAYOUT_V2").is_some_and(|v| v == "1")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn ms(v: &[Option<f64>]) -> String {
    v.iter()
        .map(|x| x.map_or("lost".to_string(), |x| format!("{:.1}", x * 1000.0)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// For each click written at `sent[k]` (seconds), its delay to the first onset of `rec`
/// (by the receiving sink's clock) within 0.45 s after it; `None` if none arrived.
fn click_delays(rec: &Recording, sent: &[f64]) -> Vec<Option<f64>> {
    let times: Vec<f64> = rec
        .onsets(LOUD, QUIET)
        .into_iter()
        .filter_map(|f| rec.clock_time(f, 1.0, 0.0))
        .collect();
    sent.iter()
        .map(|s| {
            times
                .iter()
                .find(|t| **t > *s && **t - *s < 0.45)
                .map(|t| t - s)
        })
        .collect()
}

#[test]
fn p1_click_trains_after_load_silence_and_reconnect() {
    let Some(_g) = begin_tunnel("p1") else {
        return;
    };
    let port = free_port();
    let receiver = Daemon::receiver("p1-rx", port, "auth-anonymous=1");
    let proxy = CountingProxy::start(port);
    let sender = Daemon::named("p1-tx");
    let origin = Origin::now();
    let rec = TimedRecorder::start(&receiver, "null.monitor", origin).expect("parec");
    // The receiving null sink renders 2 s ahead while nothing reads it; a reader's 10 ms
    // request shrinks its blocks, but what it already rendered plays out first, and no stream
    // can rewind that far (its rewinds reach one block). pacat straight into the sink 0.5 s
    // after the reader came lost its first click and played the rest 307 ms late. The trains
    // start once the sink runs in the reader's blocks, as a sink with a client does.
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    sender.load_tunnel("tun", proxy.port(), "");
    let after_load = play_train(&sender, "tun", CLICKS, SPACING, 30, origin).expect("train 1");
    let load_to_click = after_load[0] - origin.secs(t0);
    std::thread::sleep(Duration::from_secs(8));
    let after_silence = play_train(&sender, "tun", CLICKS, SPACING, 30, origin).expect("train 2");
    let conns = proxy.connections();
    proxy.cut_all();
    let t = Instant::now();
    while !(proxy.connections() > conns && proxy.open_connections() == 1) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no reconnection within 5 s{}",
            tunnel_logs(&sender, &receiver)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let reconnect_ms = t.elapsed().as_secs_f64() * 1000.0;
    let after_reconnect = play_train(&sender, "tun", CLICKS, SPACING, 30, origin).expect("train 3");
    std::thread::sleep(Duration::from_millis(500));
    let rec = rec.finish();
    let mut failures = Vec::new();
    println!(
        "first click written {:.0} ms after load-module returned; reconnected {:.0} ms after the cut",
        load_to_click * 1000.0,
        reconnect_ms
    );
    for (name, sent) in [
        ("after load-module", &after_load),
        ("after 8 s of silence", &after_silence),
        ("after a reconnect", &after_reconnect),
    ] {
        let d = click_delays(&rec, sent);
        let lost = d.iter().filter(|x| x.is_none()).count();
        let steady: Vec<f64> = d.iter().skip(2).flatten().copied().collect();
        let steady = median(&steady);
        println!(
            "{name}: click delays (pacat write to the receiving sink's clock, ms): {}; \
             steady (clicks 3-{CLICKS}) {:.1} ms",
            ms(&d),
            steady * 1000.0
        );
        if lost > 0 {
            failures.push(format!("{name}: {lost} of {CLICKS} clicks lost"));
        }
        match d[0] {
            Some(first) if first > steady + 0.020 => failures.push(format!(
                "{name}: the first click took {:.1} ms, steady + 20 ms is {:.1}",
                first * 1000.0,
                (steady + 0.020) * 1000.0
            )),
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{}{}",
        failures.join("\n"),
        tunnel_logs(&sender, &receiver)
    );
}

/// The properties of source `name` (`pactl list sources`).
fn source_props(d: &Daemon, name: &str) -> HashMap<String, String> {
    let text = d.pactl_ok(&["list", "sources"]);
    for block in text.split("Source #").skip(1) {
        if !block.contains(&format!("Name: {name}\n")) {
            continue;
        }
        return block
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.split_once(" = ").or_else(|| l.split_once(": "))
            })
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
    }
    panic!("no source {name} in\n{text}");
}

fn num(p: &HashMap<String, String>, k: &str) -> u64 {
    p.get(k).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// A receiver (`NAME-rx`, anonymous) and a sender (`NAME-tx`) whose tunnel sink `tun` plays
/// into it at the defaults.
fn tunnel_pair(name: &str) -> (Daemon, Daemon) {
    let port = free_port();
    let receiver = Daemon::receiver(&format!("{name}-rx"), port, "auth-anonymous=1");
    let sender = Daemon::named(&format!("{name}-tx"));
    sender.load_tunnel("tun", port, "");
    (receiver, sender)
}

/// Left channel of stereo audio: frequency and level.
fn tone_of(audio: &[i16]) -> (f64, f64) {
    let l = channel(audio, 0, 2);
    (dominant_frequency(&l, 48_000), rms_dbfs(&l))
}

/// A source that posts 500 ms blocks: `module-pipe-source` fed a 440 Hz tone (s16le stereo
/// 48 kHz, amplitude 0.5) by a thread that writes 500 ms at once every 500 ms by its clock.
/// (The source posts what it reads, 4 KiB at a time, so each block reaches its readers within
/// a few milliseconds.) What does not fit in the pipe while nobody records is dropped, as a
/// device drops what nobody reads.
struct BlockWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlockWriter {
    const BLOCK_SEC: f64 = 0.5;

    fn start(fifo: &std::path::Path, hz: f64) -> BlockWriter {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(fifo)
            .unwrap_or_else(|e| panic!("open {}: {e}", fifo.display()));
        // One page of pipe, as a device's own buffer: while nobody records, what waits in it
        // is 21 ms, not the 341 ms of a default pipe that a new reader would get at once.
        rustix::pipe::fcntl_setpipe_size(&f, 4096).expect("F_SETPIPE_SZ");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let block = (48_000.0 * Self::BLOCK_SEC) as usize;
            let t0 = Instant::now();
            let mut n = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let mut bytes = Vec::with_capacity(block * 4);
                for i in n..n + block {
                    let v = (0.5
                        * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin()
                        * 32767.0) as i16;
                    bytes.extend_from_slice(&v.to_le_bytes());
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                n += block;
                // The block goes into the pipe as fast as the source reads it; what is still
                // out when the next block is due (nobody records) is dropped.
                let due = t0 + Duration::from_secs_f64(n as f64 / 48_000.0);
                let mut off = 0;
                while off < bytes.len() && Instant::now() < due {
                    match f.write(&bytes[off..]) {
                        Ok(k) if k > 0 => off += k,
                        _ => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        });
        BlockWriter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn p2_tunnel_source_on_a_source_posting_large_blocks() {
    record_large_blocks("p2", BlockSource::Pipe500ms);
}

/// `module-sine-source` posts 2 s at once (its fixed latency): the tunnel source at its
/// defaults (`max_latency_msec` 2500) holds a whole block, so the tone plays on through the
/// blocks' ends.
#[test]
fn p6_tunnel_source_on_module_sine_source() {
    record_large_blocks("p6", BlockSource::Sine2s);
}

/// The far end's source in [`record_large_blocks`].
enum BlockSource {
    /// `module-pipe-source` fed 500 ms at a time by a [`BlockWriter`]; readers read 2 s.
    Pipe500ms,
    /// `module-sine-source` (2 s blocks); readers read 5 s (two blocks' ends).
    Sine2s,
}

/// Three readers, one after the other, of a tunnel source recording a far end's source that
/// posts large blocks: each hears the tone at the right frequency and level from its second
/// second on (every 250 ms of it), and none adds an underrun.
fn record_large_blocks(name: &str, kind: BlockSource) {
    let Some(_g) = begin(
        name,
        &["module-tunnel-source-opus", "module-opus-protocol-tcp"],
    ) else {
        return;
    };
    const HZ: f64 = 440.0;
    let port = free_port();
    let receiver = Daemon::named(&format!("{name}-far"));
    let fifo = receiver.dir().join("blocks.fifo");
    let (_writer, read_secs) = match kind {
        BlockSource::Pipe500ms => {
            receiver
                .load_module(
                    "module-pipe-source",
                    &format!(
                        "source_name=blocks file={} format=s16le rate=48000 channels=2",
                        fifo.display()
                    ),
                )
                .unwrap_or_else(|e| panic!("pipe source: {e}"));
            (Some(BlockWriter::start(&fifo, HZ)), 2.0)
        }
        BlockSource::Sine2s => {
            receiver
                .load_module(
                    "module-sine-source",
                    &format!("source_name=blocks rate=48000 frequency={HZ}"),
                )
                .unwrap_or_else(|e| panic!("sine source: {e}"));
            (None, 5.0)
        }
    };
    receiver
        .load_module(
            "module-opus-protocol-tcp",
            &format!("port={port} listen=127.0.0.1 auth-anonymous=1 source=blocks"),
        )
        .unwrap_or_else(|e| panic!("receiver: {e}"));
    // The tone as the far end's source posts it (its second second: the first holds what the
    // pipe kept while nobody read).
    let direct = Recorder::start(&receiver, "blocks")
        .read(2.0)
        .expect("the block source directly");
    let (f0, l0) = tone_of(&direct[direct.len() / 2..]);
    let desktop = Daemon::named(&format!("{name}-desktop"));
    desktop
        .load_module(
            "module-tunnel-source-opus",
            &format!("source_name=mic server=tcp:127.0.0.1:{port}"),
        )
        .unwrap_or_else(|e| panic!("tunnel source: {e}"));
    let t = Instant::now();
    while source_props(&desktop, "mic")
        .get("opus.tunnel.state")
        .map(String::as_str)
        != Some("idle")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the tunnel source did not connect{}",
            tunnel_logs(&desktop, &receiver)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = source_props(&desktop, "mic");
    let (under0, plc0) = (
        num(&p, "opus.tunnel.underruns"),
        num(&p, "opus.tunnel.plc_frames"),
    );
    println!("the block source at the far end: {f0:.1} Hz at {l0:.2} dBFS");
    let mut failures = Vec::new();
    let mut under = under0;
    for reader in 1..=3 {
        let t = Instant::now();
        let mut rec = Recorder::start(&desktop, "mic");
        let first = t.elapsed();
        let audio = rec.read(read_secs).expect("recording");
        // What the source reports as its latency while it is read (ms).
        let reported = source_props(&desktop, "mic")
            .get("Latency")
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |v| v / 1000.0);
        drop(rec);
        // Level every 250 ms, for the picture; the check is on the second second.
        let quarter = 48_000 / 4 * 2;
        let levels: Vec<String> = audio
            .chunks(quarter)
            .map(|c| format!("{:.1}", tone_of(c).1))
            .collect();
        // The second second (stereo samples).
        let second = (48_000 * 2).min(audio.len())..(2 * 48_000 * 2).min(audio.len());
        let (f, l) = tone_of(&audio[second.clone()]);
        std::thread::sleep(Duration::from_millis(1500));
        let p = source_props(&desktop, "mic");
        let (u, plc) = (
            num(&p, "opus.tunnel.underruns"),
            num(&p, "opus.tunnel.plc_frames"),
        );
        println!(
            "reader {reader}: first audio after {:.0} ms; 1-2 s: {f:.1} Hz at {l:.2} dBFS; \
             levels per 250 ms: {}; underruns {u} (+{}), plc frames {plc} (+{}); \
             the source reported {reported:.1} ms of latency at 2 s",
            first.as_secs_f64() * 1000.0,
            levels.join(" "),
            u.saturating_sub(under),
            plc.saturating_sub(plc0)
        );
        if (f - HZ).abs() > 5.0 {
            failures.push(format!("reader {reader}: {f:.1} Hz in its second second"));
        }
        if (l - l0).abs() > 1.0 {
            failures.push(format!(
                "reader {reader}: {l:.2} dBFS in its second second, {l0:.2} at the far end"
            ));
        }
        // From the second second on, through the blocks' ends: no quarter second more than 1 dB
        // off the level at the far end.
        let quiet = audio[second.start..]
            .chunks(quarter)
            .filter(|c| c.len() == quarter && (tone_of(c).1 - l0).abs() > 1.0)
            .count();
        if quiet > 0 {
            failures.push(format!(
                "reader {reader}: {quiet} quarter seconds from its second second on off the level"
            ));
        }
        if u != under {
            failures.push(format!("reader {reader}: {} new underruns", u - under));
        }
        under = u;
    }
    assert!(
        failures.is_empty(),
        "{}{}",
        failures.join("\n"),
        tunnel_logs(&desktop, &receiver)
    );
}

#[test]
fn p3_render_to_render_latency_and_the_reported_latency() {
    let Some(_g) = begin_tunnel("p3") else {
        return;
    };
    // Extra arguments for a preset (e.g. the README's low-latency one):
    // OPUS_TUNNEL_P3_SENDER_ARGS for the tunnel sink, OPUS_TUNNEL_P3_RECEIVER_ARGS for the
    // receiver; the tunnel sink's block is its latency_msec (10 at defaults).
    let sender_args = std::env::var("OPUS_TUNNEL_P3_SENDER_ARGS").unwrap_or_default();
    let receiver_args = std::env::var("OPUS_TUNNEL_P3_RECEIVER_ARGS").unwrap_or_default();
    let sender_block = sender_args
        .split_whitespace()
        .find_map(|a| a.strip_prefix("latency_msec="))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(10.0)
        / 1000.0;
    const TRAIN: usize = 14;
    let port = free_port();
    let receiver = Daemon::receiver("p3-rx", port, &format!("auth-anonymous=1 {receiver_args}"));
    let sender = Daemon::named("p3-tx");
    sender.load_tunnel("tun", port, &sender_args);
    let origin = Origin::now();
    let rec_s = TimedRecorder::start(&sender, "tun.monitor", origin).expect("parec tx");
    let rec_r = TimedRecorder::start(&receiver, "null.monitor", origin).expect("parec rx");
    std::thread::sleep(Duration::from_millis(500));
    let (sent, readings, null_block) = std::thread::scope(|s| {
        let train = s.spawn(|| play_train(&sender, "tun", TRAIN, SPACING, 30, origin));
        // Steady playing from the 4th second on: ten readings 200 ms apart.
        std::thread::sleep(Duration::from_secs(4));
        let mut readings = Vec::new();
        for _ in 0..10 {
            let (l, _) = sink_latency_usec(&sender, "tun").expect("tun latency");
            readings.push(l / 1000.0);
            std::thread::sleep(Duration::from_millis(200));
        }
        let (_, null_block) = sink_latency_usec(&receiver, "null").expect("null latency");
        (
            train.join().expect("train thread").expect("train"),
            readings,
            null_block / 1e6,
        )
    });
    let device = receiver
        .pactl_ok(&["list", "sink-inputs"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("opus.tunnel.device_latency_usec = "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "?".into());
    let props = sender.sink_properties("tun").unwrap_or_default();
    let prop = |k: &str| props.get(k).cloned().unwrap_or_else(|| "?".into());
    let remote = format!(
        "remote.latency_usec {}, remote.device_latency_usec {}, network_usec {} \
         (the receiver's stream: device_latency_usec {device})",
        prop("opus.tunnel.remote.latency_usec"),
        prop("opus.tunnel.remote.device_latency_usec"),
        prop("opus.tunnel.network_usec")
    );
    std::thread::sleep(Duration::from_millis(300));
    let (rs, rr) = (rec_s.finish(), rec_r.finish());
    let (on_s, on_r) = (rs.onsets(LOUD, QUIET), rr.onsets(LOUD, QUIET));
    println!(
        "clicks written {}, seen at the tunnel sink's monitor {}, at the receiver's null.monitor {}; \
         chunks (frames) tx {:?} rx {:?}; null sink block {:.1} ms",
        sent.len(),
        on_s.len(),
        on_r.len(),
        rs.chunk_sizes(6),
        rr.chunk_sizes(6),
        null_block * 1000.0
    );
    // Each click as the sender's sink rendered it, matched to where the receiver's sink played
    // it (the first onset 0-400 ms later by the two sinks' clocks).
    let mut rows = Vec::new();
    for &fs in &on_s {
        let (Some(cs), Some(ws)) = (
            rs.clock_time(fs, 1.0, sender_block),
            rs.render_time(fs, 1.0, sender_block),
        ) else {
            continue;
        };
        let hit = on_r.iter().find_map(|&fr| {
            let cr = rr.clock_time(fr, 1.0, null_block)?;
            let wr = rr.render_time(fr, 1.0, null_block)?;
            (cr > cs && cr - cs < 0.4).then_some((cr, wr))
        });
        if let Some((cr, wr)) = hit {
            rows.push((ws, wr - ws, cr - ws, cr - cs));
        }
    }
    // Clicks from the 3rd second of the train on count as steady.
    let steady_from = sent.first().copied().unwrap_or(0.0) + 3.0;
    let steady: Vec<_> = rows.iter().filter(|r| r.0 >= steady_from).collect();
    let col =
        |i: usize| -> Vec<f64> { steady.iter().map(|r| [r.1, r.2, r.3][i] * 1000.0).collect() };
    let (render_render, render_play, clock_clock) =
        (median(&col(0)), median(&col(1)), median(&col(2)));
    let lo = readings.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = readings.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = readings.iter().sum::<f64>() / readings.len().max(1) as f64;
    println!(
        "render to render (the sender's IO thread renders the click → the receiver's renders it): \
         median {render_render:.1} ms over {} steady clicks {:?}",
        steady.len(),
        col(0).iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>()
    );
    println!(
        "render to play (→ the receiver's sink clock plays it: + the receiving device's latency): \
         {render_play:.1} ms; sink clock to sink clock {clock_clock:.1} ms"
    );
    println!(
        "tun's reported latency (pactl list sinks, 10 readings 200 ms apart): {} ms; \
         {lo:.1}-{hi:.1}, spread {:.1} ms, mean {mean:.1} ms, mean - render-to-play {:+.1} ms, \
         mean - render-to-render {:+.1} ms; the sink's opus.tunnel.{remote}",
        readings
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        hi - lo,
        mean - render_play,
        mean - render_render
    );
    assert!(
        steady.len() >= 6,
        "only {} steady clicks matched at both ends{}",
        steady.len(),
        tunnel_logs(&sender, &receiver)
    );
    assert!(
        render_render > 0.0 && render_play >= render_render,
        "inconsistent figures: render-render {render_render:.1}, render-play {render_play:.1}"
    );
    if goals_asserted() {
        // 40 ms at defaults; a preset names its own goal (OPUS_TUNNEL_P3_GOAL_MS).
        let goal: f64 = std::env::var("OPUS_TUNNEL_P3_GOAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40.0);
        assert!(
            render_render <= goal,
            "render-to-render latency {render_render:.1} ms > {goal} ms"
        );
        // While nothing changes the readings agree within 1 ms; a step of the target (the
        // engine still learning the link in its first seconds) shows as one step.
        let steps = readings
            .windows(2)
            .filter(|w| (w[1] - w[0]).abs() > 1.0)
            .count();
        assert!(
            steps <= 1,
            "the reported latency moved {steps} times between readings ({lo:.1}-{hi:.1} ms)"
        );
        assert!(
            (mean - render_play).abs() <= 5.0,
            "reported {mean:.1} ms, measured {render_play:.1} ms"
        );
        // The receiver reports its device's latency, which the sum counts.
        assert!(
            props
                .get("opus.tunnel.remote.device_latency_usec")
                .is_some_and(|v| v.parse::<u64>().is_ok()),
            "the receiver's reports carry no device_latency_usec"
        );
    } else {
        println!("(goals not asserted: set OPUS_TUNNEL_PLAYOUT_V2=1)");
    }
}

/// A start after idle on a sink nothing reads (a receiver's null sink with no monitor reader,
/// as a sound card with no other stream: it renders up to its longest block, 2 s, ahead while
/// our stream is quiet): audio played 8 s after `load-module`, and again after 8 s of silence,
/// plays with no underrun and a target of tens of ms. (The stream resumed by uncorking first:
/// the sink rewound and re-rendered its whole 2 s block from a stream that had a few ms, 12
/// underruns at each start, a target of 193 ms and the latency up to 1 s for seconds.)
#[test]
fn p4_starts_after_idle_on_a_sink_nothing_reads() {
    let Some(_g) = begin_tunnel("p4") else {
        return;
    };
    let (receiver, sender) = tunnel_pair("p4");
    let mut failures = Vec::new();
    let mut under = 0;
    for start in ["8 s after load-module", "after 8 s of silence"] {
        std::thread::sleep(Duration::from_secs(8));
        let player = play_loop(&sender, "tun", tone_loop(440.0, 440.0, -12.0));
        std::thread::sleep(Duration::from_secs(3));
        let p = stream_props(&receiver);
        drop(player);
        let (u, target, latency) = (
            num(&p, "opus.tunnel.underruns"),
            num(&p, "opus.tunnel.target_latency_usec") as f64 / 1000.0,
            num(&p, "opus.tunnel.latency_usec") as f64 / 1000.0,
        );
        println!(
            "{start}: underruns {u} (+{}), target {target:.1} ms, latency {latency:.1} ms",
            u.saturating_sub(under)
        );
        if u != under {
            failures.push(format!("{start}: {} underruns", u.saturating_sub(under)));
        }
        if target > 100.0 || latency > 100.0 {
            failures.push(format!(
                "{start}: target {target:.1} ms, latency {latency:.1} ms 3 s in"
            ));
        }
        under = u;
    }
    assert!(
        failures.is_empty(),
        "{}{}",
        failures.join("\n"),
        tunnel_logs(&sender, &receiver)
    );
}

/// The end of a stream leaves the receiver's target where it was: a stream that stops in the
/// middle of a codec frame has its last frame padded with silence, and that frame is sent when
/// the padding's time has come. (Sent at once, it came early by up to a frame, the receiver's
/// line of earliest arrivals moved to it and every packet before it counted late: the target
/// rose 9.6–12.5 ms at each stop and held that for 10 s, into the next stream.) Three stops of
/// a tone with a reader on the receiver's null sink, as the bench has.
#[test]
fn p5_a_stop_leaves_the_target_where_it_was() {
    let Some(_g) = begin_tunnel("p5") else {
        return;
    };
    let (receiver, sender) = tunnel_pair("p5");
    let mut reader = Recorder::start(&receiver, "null.monitor");
    reader.discard();
    let target = || {
        let p = stream_props(&receiver);
        num(&p, "opus.tunnel.target_latency_usec") as f64 / 1000.0
    };
    // The target 3 s into a stream, and 1 s into the next one (the receiver keeps what its
    // target learnt across a pause: a rise at the stop shows there).
    let mut rises = Vec::new();
    let mut before = None;
    for _ in 0..4 {
        let player = play_loop(&sender, "tun", tone_loop(440.0, 440.0, -12.0));
        std::thread::sleep(Duration::from_secs(1));
        if let Some(b) = before {
            rises.push(target() - b);
        }
        std::thread::sleep(Duration::from_secs(2));
        before = Some(target());
        drop(player);
        std::thread::sleep(Duration::from_millis(1200));
    }
    println!("target 1 s into a stream minus 3 s into the one before (ms): {rises:.1?}");
    assert!(
        rises.iter().all(|r| *r < 6.0),
        "a stop raised the target: {rises:.1?} ms{}",
        tunnel_logs(&sender, &receiver)
    );
}

/// A stall of the whole host in the play direction (both daemons stopped at once, their clocks
/// running on): the receiver's sink renders its catch-up before the sender's catch-up audio
/// is in, and a sink cannot wait for it. What fills the shortfall is the expander's
/// continuation of the tone, fading, not digital silence: no dropout (≥ 5 ms 20 dB below).
#[test]
fn p7_host_stalls_play_on_without_a_dropout() {
    let Some(_g) = begin_tunnel("p7") else {
        return;
    };
    let (receiver, sender) = tunnel_pair("p7");
    let _player = play_loop(&sender, "tun", tone_loop(700.0, 700.0, -12.0));
    let mut rec = Recorder::start(&receiver, "null.monitor");
    let _ = rec.read(5.0).expect("warm-up");
    let before = num(&stream_props(&receiver), "opus.tunnel.underruns");
    let pids = [receiver.pid(), sender.pid()];
    let mut gaps = Vec::new();
    for ms in [20, 30, 40, 30] {
        opus_tunnel_tests::process::stall(&pids, Duration::from_millis(ms));
        let audio = rec.read(2.0).expect("recording");
        gaps.extend(
            opus_tunnel_tests::dropouts(&audio, 2)
                .into_iter()
                .map(|d| format!("{ms} ms stall: {:.0} ms at {:.0} ms", d.len_ms, d.start_ms)),
        );
        let (f, l) = tone_of(&audio);
        assert!(
            (f - 700.0).abs() <= 5.0 && (l + 12.0).abs() <= 1.0,
            "{f} Hz at {l} dBFS"
        );
    }
    let p = stream_props(&receiver);
    println!(
        "four stalls of 20-40 ms: underruns {} (+{}), dropouts {gaps:?}, target {:.1} ms",
        num(&p, "opus.tunnel.underruns"),
        num(&p, "opus.tunnel.underruns").saturating_sub(before),
        num(&p, "opus.tunnel.target_latency_usec") as f64 / 1000.0
    );
    assert!(gaps.is_empty(), "dropouts: {gaps:?}");
}
