//! `module-suspend-on-idle` on both ends (issue 21): the desktop daemon (tunnel sink and tunnel
//! source) and the receiving daemon both load it with `timeout=1`; each cycle waits until both
//! the tunnel sink and the receiver's sink are suspended, plays one click into the tunnel
//! sink, and checks that the click arrives whole at the receiver's sink and that both daemons
//! are alive. `OPUS_TUNNEL_SUSPEND_CYCLES` cycles (default 10; the issue asks for 100 by hand).
//! At the end the tunnel is unloaded while the receiver's sink is suspended.
//!
//! The receiver plays into `module-pipe-sink` with `use_system_clock_for_timing=yes`, read
//! here through its FIFO: unlike a reader of a null sink's monitor (which keeps the sink
//! awake), the FIFO lets the receiving sink suspend, and it carries exactly what the sink
//! rendered while it ran.
use opus_tunnel_tests::daemon::tunnel_logs;
use opus_tunnel_tests::{
    begin_tunnel, free_port, play, record_raw, write_s16le, Daemon, CHANNELS, RATE,
};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The click: 10 ms of 2 kHz at -6 dBFS, 1 ms fades, after 100 ms and before 300 ms of silence.
const CLICK_MS: usize = 10;
const AMPLITUDE: f64 = 16384.0;
/// A received sample above this is loud; an onset comes after 50 ms of quiet.
const LOUD: i32 = 4000;
const QUIET: usize = 2400;
/// Loud samples a whole click has in the 20 ms from its onset (a 10 ms 2 kHz burst above a
/// quarter of its peak: ~400 of 480; a click cut at either end has far fewer).
const WHOLE: usize = 300;

fn click() -> Vec<i16> {
    let rate = RATE as usize;
    let (pre, len, post) = (rate / 10, rate * CLICK_MS / 1000, rate * 3 / 10);
    let fade = rate / 1000;
    let mut out = Vec::with_capacity((pre + len + post) * CHANNELS);
    for i in 0..pre + len + post {
        let v = if (pre..pre + len).contains(&i) {
            let k = i - pre;
            let edge = k.min(len - 1 - k).min(fade) as f64 / fade as f64;
            let g = 0.5 - 0.5 * (std::f64::consts::PI * edge).cos();
            let t = k as f64 / RATE as f64;
            (AMPLITUDE * g * (2.0 * std::f64::consts::PI * 2000.0 * t).sin()) as i16
        } else {
            0
        };
        for _ in 0..CHANNELS {
            out.push(v);
        }
    }
    out
}

/// The state column of `pactl list short sinks` for `sink` (RUNNING, IDLE, SUSPENDED).
fn sink_state(d: &Daemon, sink: &str) -> String {
    d.pactl_ok(&["list", "short", "sinks"])
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.get(1) == Some(&sink)).then(|| f.last().unwrap_or(&"").trim().to_string())
        })
        .unwrap_or_default()
}

/// The left channel of what the pipe sink wrote, as it arrives (a thread reads the FIFO
/// until the daemon closes it).
fn read_fifo(path: &Path) -> Arc<Mutex<Vec<i16>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::File::open(&path) else {
            return;
        };
        let frame = CHANNELS * 2;
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending = Vec::new();
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            let whole = pending.len() / frame * frame;
            if let Ok(mut s) = sink.lock() {
                for fr in pending[..whole].chunks_exact(frame) {
                    s.push(i16::from_le_bytes([fr[0], fr[1]]));
                }
            }
            pending.drain(..whole);
        }
    });
    out
}

/// Clicks in `s` from sample `from` on: for each onset, its loud samples in the next 20 ms.
fn clicks_in(s: &[i16], from: usize) -> Vec<usize> {
    let mut found = Vec::new();
    let mut quiet = QUIET;
    let mut i = from;
    let span = RATE as usize / 50;
    while i < s.len() {
        if i32::from(s[i]).abs() > LOUD {
            if quiet >= QUIET {
                let end = (i + span).min(s.len());
                found.push(
                    s[i..end]
                        .iter()
                        .filter(|v| i32::from(**v).abs() > LOUD)
                        .count(),
                );
                // Skip the click (and its codec tail) before looking for the next onset.
                i = end;
            }
            quiet = 0;
        } else {
            quiet += 1;
        }
        i += 1;
    }
    found
}

fn wait_suspended(sender: &Daemon, receiver: &Daemon, what: &str) {
    let t = Instant::now();
    loop {
        let (a, b) = (sink_state(sender, "tun"), sink_state(receiver, "out"));
        if a == "SUSPENDED" && b == "SUSPENDED" {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: not both suspended after 10 s (tunnel sink {a}, receiver's sink {b}){}",
            tunnel_logs(sender, receiver)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clicks_after_suspend_on_both_ends_arrive_whole() {
    let Some(_g) = begin_tunnel("suspend") else {
        return;
    };
    let cycles: usize = std::env::var("OPUS_TUNNEL_SUSPEND_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let port = free_port();
    let fifo = std::env::temp_dir().join(format!("ot-suspend-{}-{port}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let receiver = Daemon::builder()
        .name("suspend-rx")
        .line(format!(
            "load-module module-pipe-sink sink_name=out file={} format=s16le rate=48000 channels=2 use_system_clock_for_timing=yes",
            fifo.display()
        ))
        .line("load-module module-suspend-on-idle timeout=1")
        .line(format!(
            "load-module module-opus-protocol-tcp port={port} listen=127.0.0.1 auth-anonymous=1 sink=out"
        ))
        .start()
        .expect("receiver daemon");
    let got = read_fifo(&fifo);
    let sender = Daemon::builder()
        .name("suspend-tx")
        .line("load-module module-suspend-on-idle timeout=1")
        .start()
        .expect("sender daemon");
    let tun = sender
        .load_module(
            "module-tunnel-sink-opus",
            &format!("sink_name=tun server=tcp:127.0.0.1:{port} sink=out"),
        )
        .expect("tunnel sink");
    let mic = sender
        .load_module(
            "module-tunnel-source-opus",
            &format!("source_name=mic server=tcp:127.0.0.1:{port} source=null.monitor"),
        )
        .expect("tunnel source");
    let file = std::env::temp_dir().join(format!("ot-click-{}-{port}.raw", std::process::id()));
    write_s16le(&file, &click()).expect("click file");
    let mut failures = Vec::new();
    let mut loud = Vec::new();
    let started = Instant::now();
    for cycle in 1..=cycles {
        wait_suspended(&sender, &receiver, &format!("cycle {cycle}"));
        let from = got.lock().map(|s| s.len()).unwrap_or(0);
        let t = Instant::now();
        let mut p = play(&sender, "tun", &file);
        assert!(p.wait(Duration::from_secs(10)), "cycle {cycle}: pacat hung");
        // The click, then the tail of silence, must come out of the receiver's sink.
        let found = loop {
            let c = got.lock().map(|s| clicks_in(&s, from)).unwrap_or_default();
            if !c.is_empty() || t.elapsed() > Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(100));
                break got.lock().map(|s| clicks_in(&s, from)).unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match found.as_slice() {
            [n] if *n >= WHOLE => loud.push(*n),
            [n] => failures.push(format!(
                "cycle {cycle}: the click arrived cut ({n} loud samples, a whole one has >= {WHOLE})"
            )),
            [] => {
                let (n, peak) = got
                    .lock()
                    .map(|s| {
                        let tail = &s[from.min(s.len())..];
                        (tail.len(), tail.iter().map(|v| i32::from(*v).abs()).max())
                    })
                    .unwrap_or_default();
                failures.push(format!(
                    "cycle {cycle}: the click did not arrive ({n} samples from the receiver's sink since, peak {peak:?})"
                ))
            }
            more => failures.push(format!("cycle {cycle}: {} clicks arrived: {more:?}", more.len())),
        }
        // The microphone wakes too: a reader of the suspended tunnel source for 0.2 s (the
        // far end records while it reads), then it suspends again with the rest.
        if let Err(e) = record_raw(&sender, "mic", 0.2) {
            failures.push(format!("cycle {cycle}: recording the tunnel source: {e:#}"));
        }
        assert!(
            sender.is_alive() && receiver.is_alive(),
            "cycle {cycle}: a daemon died{}",
            tunnel_logs(&sender, &receiver)
        );
    }
    println!(
        "{cycles} suspend/resume cycles in {:.1} s; {} failed; loud samples of the whole clicks \
         (a sent click has ~400 above {LOUD}): {}..{}",
        started.elapsed().as_secs_f64(),
        failures.len(),
        loud.iter().min().unwrap_or(&0),
        loud.iter().max().unwrap_or(&0)
    );
    let props = sender.sink_properties("tun").expect("tunnel sink");
    println!(
        "tunnel sink: state {:?}, reconnects {:?}",
        props.get("opus.tunnel.state"),
        props.get("opus.tunnel.reconnects")
    );
    // The tunnel ends while the receiver's sink is suspended; both daemons stay.
    wait_suspended(&sender, &receiver, "before unload");
    sender.unload_module(tun).expect("unload the tunnel sink");
    sender.unload_module(mic).expect("unload the tunnel source");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sender.is_alive() && receiver.is_alive(),
        "a daemon died at unload{}",
        tunnel_logs(&sender, &receiver)
    );
    let _ = std::fs::remove_file(&file);
    drop(sender);
    drop(receiver);
    let _ = std::fs::remove_file(&fifo);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
