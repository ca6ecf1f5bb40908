//! End-to-end click latency (the demo's method, 20 clicks): `pacat --latency-msec=10` on the
//! sender's tunnel sink, written at wall-clock pace in 10 ms blocks; `parec
//! --latency-msec=10` on the receiver's `null.monitor`; the delay from writing a click's first
//! block into pacat to the wall time its first loud sample was read from parec.

use anyhow::{anyhow, Result};
use opus_tunnel_tests::{Daemon, CHANNELS, RATE};
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Spacing between clicks, in 10 ms blocks.
const SPACING_BLOCKS: usize = 75;
/// Blocks of silence before the first click (stream start-up).
const LEAD_BLOCKS: usize = 150;

/// Plays `n` clicks into `sink` of `sender`, finds them on `receiver`'s `null.monitor`;
/// returns the delays in ms (one per click found).
pub fn click_latencies(
    sender: &Daemon,
    sink: &str,
    receiver: &Daemon,
    n: usize,
) -> Result<Vec<f64>> {
    let fmt = [
        "--raw",
        "--format=s16le",
        "--rate=48000",
        "--channels=2",
        "--latency-msec=10",
    ];
    let mut parec = receiver
        .command("parec")
        .args(fmt)
        .args(["-d", "null.monitor"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = parec.stdout.take().ok_or_else(|| anyhow!("parec stdout"))?;
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(k) = out.read(&mut buf) {
            if k == 0 || tx.send((Instant::now(), buf[..k].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut pacat = sender
        .command("pacat")
        .args(["--playback"])
        .args(fmt)
        .args(["-d", sink])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut inp = pacat.stdin.take().ok_or_else(|| anyhow!("pacat stdin"))?;
    let block = RATE as usize / 100;
    let silence = vec![0u8; block * CHANNELS * 2];
    let mut click = Vec::with_capacity(silence.len());
    for i in 0..block {
        let v =
            ((i as f64 * 2.0 * std::f64::consts::PI * 2000.0 / RATE as f64).sin() * 16000.0) as i16;
        for _ in 0..CHANNELS {
            click.extend_from_slice(&v.to_le_bytes());
        }
    }
    let start = Instant::now();
    let mut sent = Vec::new();
    let total_blocks = LEAD_BLOCKS + n * SPACING_BLOCKS + 50;
    for b in 0..total_blocks {
        let due = start + Duration::from_millis(10 * b as u64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let is_click =
            b >= LEAD_BLOCKS && (b - LEAD_BLOCKS) % SPACING_BLOCKS == 0 && sent.len() < n;
        if is_click {
            inp.write_all(&click)?;
            sent.push(Instant::now());
        } else {
            inp.write_all(&silence)?;
        }
    }
    drop(inp);
    std::thread::sleep(Duration::from_millis(300));
    let _ = pacat.kill();
    let _ = parec.kill();
    let _ = pacat.wait();
    let _ = parec.wait();
    let _ = reader.join();
    let bytes_per_frame = CHANNELS * 2;
    let mut onsets = Vec::new();
    let mut quiet_frames = 0usize;
    for (t, chunk) in rx.try_iter() {
        let frames = chunk.len() / bytes_per_frame;
        for f in 0..frames {
            let v =
                i16::from_le_bytes([chunk[f * bytes_per_frame], chunk[f * bytes_per_frame + 1]]);
            if v.unsigned_abs() > 4000 {
                if quiet_frames > RATE as usize * 4 / 10 {
                    let after = (frames - f) as f64 / RATE as f64;
                    onsets.push(t - Duration::from_secs_f64(after));
                }
                quiet_frames = 0;
            } else {
                quiet_frames += 1;
            }
        }
    }
    let mut lat = Vec::new();
    for s in &sent {
        if let Some(o) = onsets
            .iter()
            .find(|o| **o > *s && o.duration_since(*s) < Duration::from_millis(700))
        {
            lat.push(o.duration_since(*s).as_secs_f64() * 1000.0);
        }
    }
    Ok(lat)
}

/// (median, p95 by nearest rank) of `v`; NaN when empty.
pub fn median_p95(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    let rank = ((0.95 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    (med, s[rank - 1])
}
