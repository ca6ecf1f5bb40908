//! End-to-end click latency: `pacat --latency-msec=10` on a sender's sink, written at
//! wall-clock pace in 10 ms blocks (so that nothing piles up in the pipe), `parec
//! --latency-msec=10` on the receiver's `null.monitor`; the delay from writing a click's
//! block into pacat to the wall time its first loud sample was read from parec.

use crate::daemon::Daemon;
use crate::signal::{CHANNELS, RATE};
use anyhow::{anyhow, Result};
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a click run is paced and read back.
#[derive(Debug, Clone, Copy)]
pub struct ClickPlan {
    /// Blocks (10 ms) of silence before the first click (stream start-up).
    pub lead_blocks: usize,
    /// Blocks between the starts of two clicks.
    pub spacing_blocks: usize,
    /// Blocks written in all, clicks included.
    pub total_blocks: usize,
    /// How long to let the far end drain after the last block.
    pub drain: Duration,
    /// An onset is a loud sample after more than this many quiet frames.
    pub quiet_frames: usize,
    /// A click found later than this after it was written does not count.
    pub max_delay: Duration,
}

/// Plays `n` 10 ms clicks (2 kHz) into `sink` of `sender` as `plan` says, finds them on
/// `receiver`'s `null.monitor`; returns the delays in ms (one per click found).
pub fn click_latencies(
    sender: &Daemon,
    sink: &str,
    receiver: &Daemon,
    n: usize,
    plan: &ClickPlan,
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
    for b in 0..plan.total_blocks {
        let due = start + Duration::from_millis(10 * b as u64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let is_click = b >= plan.lead_blocks
            && (b - plan.lead_blocks) % plan.spacing_blocks == 0
            && sent.len() < n;
        if is_click {
            inp.write_all(&click)?;
            sent.push(Instant::now());
        } else {
            inp.write_all(&silence)?;
        }
    }
    drop(inp);
    std::thread::sleep(plan.drain);
    let _ = pacat.kill();
    let _ = parec.kill();
    let _ = pacat.wait();
    let _ = parec.wait();
    let _ = reader.join();
    // Onsets in the received stream, each with the wall time its sample was read.
    let bytes_per_frame = CHANNELS * 2;
    let mut onsets = Vec::new();
    let mut quiet_frames = 0usize;
    for (t, chunk) in rx.try_iter() {
        let frames = chunk.len() / bytes_per_frame;
        for f in 0..frames {
            let v =
                i16::from_le_bytes([chunk[f * bytes_per_frame], chunk[f * bytes_per_frame + 1]]);
            if v.unsigned_abs() > 4000 {
                if quiet_frames > plan.quiet_frames {
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
            .find(|o| **o > *s && o.duration_since(*s) < plan.max_delay)
        {
            lat.push(o.duration_since(*s).as_secs_f64() * 1000.0);
        }
    }
    Ok(lat)
}
