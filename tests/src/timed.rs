//! Timed recordings: a `parec` whose every read is stamped with the wall time it arrived,
//! so that a sample's position in the recording can be turned into the time its device
//! handled it; and click trains written into `pacat` at wall-clock pace, each click's write
//! time noted. Times are seconds since an [`Origin`] shared by all the recordings of a test.
//!
//! **Where a sample was, when.** A sink renders a block ahead of its own clock and posts it to
//! its monitor at once; `parec --latency-msec=10` on the monitor receives each block (or each
//! 10 ms piece of it) a fraction of a millisecond after the render. For the chunk ending at
//! frame `e` that arrived at `t`, `t - e/rate` is smallest for chunks that end a block and
//! were delivered fastest: there it is the sink's clock offset minus one block plus the
//! fastest delivery. So [`Recording::clock_time`] (that lower envelope, near the frame, plus
//! the sink's block) is when the sink's clock plays a frame — the time a
//! `module-null-sink` (or our tunnel sink) says the frame is played — and
//! [`Recording::render_time`] (the same envelope at the end of the frame's block, less the
//! block) is when the sink's IO thread rendered it; both carry the same fastest-delivery
//! offset, which cancels between two recordings of the same kind. Both assume a sink that
//! renders blocks of a fixed size when its clock reaches their start (ours and
//! `module-null-sink` do), and a steady clock over the window.

use crate::daemon::Daemon;
use crate::process::Strays;
use crate::signal::{CHANNELS, RATE};
use anyhow::{anyhow, bail, Result};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The common time base of a test's recordings and players.
#[derive(Debug, Clone, Copy)]
pub struct Origin(Instant);

impl Origin {
    pub fn now() -> Origin {
        Origin(Instant::now())
    }

    /// Seconds from the origin to `t`.
    pub fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.0).as_secs_f64()
    }

    /// Seconds from the origin to now.
    pub fn elapsed(&self) -> f64 {
        self.secs(Instant::now())
    }
}

/// A chunk of a recording: it ended at frame `end` (exclusive) and arrived at `at` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    pub at: f64,
    pub end: usize,
}

/// What a [`TimedRecorder`] recorded: the left channel and the arrival of every read.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub left: Vec<i16>,
    pub chunks: Vec<Chunk>,
}

/// A `parec --latency-msec=10` (s16le, 48 kHz, stereo) on a source whose reads are stamped
/// on arrival. Killed (and reaped) on [`TimedRecorder::finish`] or drop.
pub struct TimedRecorder {
    child: Option<Child>,
    strays: Strays,
    reader: Option<JoinHandle<Recording>>,
}

impl TimedRecorder {
    /// Starts recording `source` of `d`.
    pub fn start(d: &Daemon, source: &str, origin: Origin) -> Result<TimedRecorder> {
        let mut child = d
            .command("parec")
            .args([
                "--raw",
                "--format=s16le",
                "--rate=48000",
                "--channels=2",
                "--latency-msec=10",
                "--client-name=opus-tunnel-tests",
                "-d",
                source,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        d.strays.register(child.id());
        let mut out = child.stdout.take().ok_or_else(|| anyhow!("parec stdout"))?;
        let reader = std::thread::Builder::new()
            .name("timed-parec".into())
            .spawn(move || {
                let frame = CHANNELS * 2;
                let mut rec = Recording::default();
                let mut buf = vec![0u8; 64 * 1024];
                let mut pending: Vec<u8> = Vec::new();
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let at = origin.elapsed();
                    pending.extend_from_slice(&buf[..n]);
                    let whole = pending.len() / frame * frame;
                    for f in pending[..whole].chunks_exact(frame) {
                        rec.left.push(i16::from_le_bytes([f[0], f[1]]));
                    }
                    pending.drain(..whole);
                    rec.chunks.push(Chunk {
                        at,
                        end: rec.left.len(),
                    });
                }
                rec
            })?;
        Ok(TimedRecorder {
            child: Some(child),
            strays: d.strays.clone(),
            reader: Some(reader),
        })
    }

    /// Stops parec and returns what it recorded.
    pub fn finish(mut self) -> Recording {
        self.strays.kill_child(self.child.take());
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for TimedRecorder {
    fn drop(&mut self) {
        self.strays.kill_child(self.child.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Recording {
    /// Frames where a click starts: a sample above `threshold` after more than `quiet`
    /// frames at or below it.
    pub fn onsets(&self, threshold: i16, quiet: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut quiet_run = quiet + 1;
        for (i, v) in self.left.iter().enumerate() {
            if v.unsigned_abs() > threshold.unsigned_abs() {
                if quiet_run > quiet {
                    out.push(i);
                }
                quiet_run = 0;
            } else {
                quiet_run += 1;
            }
        }
        out
    }

    /// The lower envelope of `arrival - end/rate` over the chunks ending within `window`
    /// seconds of `frame`, and the end of the chunk where it is reached.
    fn envelope(&self, frame: usize, window: f64) -> Option<(f64, usize)> {
        let rate = f64::from(RATE);
        let span = (window * rate) as usize;
        let (lo, hi) = (frame.saturating_sub(span), frame + span);
        self.chunks
            .iter()
            .filter(|c| c.end >= lo && c.end <= hi)
            .map(|c| (c.at - c.end as f64 / rate, c.end))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// When the sink's clock plays `frame` (seconds; see the module's documentation): the
    /// lower envelope near the frame, plus `frame/rate` and the sink's block `block`
    /// (seconds).
    pub fn clock_time(&self, frame: usize, window: f64, block: f64) -> Option<f64> {
        let (env, _) = self.envelope(frame, window)?;
        Some(env + frame as f64 / f64::from(RATE) + block)
    }

    /// When the sink's IO thread rendered `frame` (seconds, with the same delivery offset as
    /// [`clock_time`](Self::clock_time)): blocks of `block` seconds end on the grid of the
    /// chunk where the envelope is reached, and a block is rendered when the sink's clock
    /// reaches its start. (Reading the grid rather than the chunk that held the frame keeps a
    /// late read, which merges blocks, from moving the figure.)
    pub fn render_time(&self, frame: usize, window: f64, block: f64) -> Option<f64> {
        let (env, e_ref) = self.envelope(frame, window)?;
        let b = ((block * f64::from(RATE)).round() as i64).max(1);
        let block_end = e_ref as i64 + ((frame as i64 - e_ref as i64).div_euclid(b) + 1) * b;
        Some(env + block_end as f64 / f64::from(RATE))
    }

    /// The sizes of the chunks in frames, for messages (first `n`).
    pub fn chunk_sizes(&self, n: usize) -> Vec<usize> {
        let mut prev = 0;
        self.chunks
            .iter()
            .take(n)
            .map(|c| {
                let s = c.end - prev;
                prev = c.end;
                s
            })
            .collect()
    }
}

/// The whole stream of a click train, s16le stereo: `blocks` 10 ms blocks of silence with
/// `n` 5 ms clicks (2 kHz, half scale), click `k` starting `offset(k)` frames into block
/// `k * spacing`.
fn train_bytes(n: usize, spacing: usize, blocks: usize) -> Vec<u8> {
    let block = RATE as usize / 100;
    let mut frames = vec![0i16; blocks * block];
    for k in 0..n {
        let start = k * spacing * block + click_offset(k);
        for i in 0..block / 2 {
            let v = (i as f64 * 2.0 * std::f64::consts::PI * 2000.0 / RATE as f64).sin() * 16000.0;
            if let Some(f) = frames.get_mut(start + i) {
                *f = v as i16;
            }
        }
    }
    frames
        .iter()
        .flat_map(|v| std::iter::repeat(v.to_le_bytes()).take(CHANNELS))
        .flatten()
        .collect()
}

/// Where click `k` starts in its 10 ms block, frames: spread evenly over the block (golden
/// ratio steps), so that the clicks fall at every phase of the sinks' blocks.
fn click_offset(k: usize) -> usize {
    let block = RATE as usize / 100;
    ((k as f64 * 0.618_034).fract() * block as f64) as usize
}

/// A train of `n` clicks into `sink` of `d` through `pacat --latency-msec=10`: pacat is
/// started, and once its stream exists on the daemon the train is written in 10 ms blocks at
/// wall-clock pace, the first click in the first block, then one every `spacing_blocks`
/// blocks (each at its own phase in its block, see `click_offset`), then `tail_blocks` of
/// silence; pacat then drains and exits. Returns when each click was written (seconds since
/// `origin`: the write of its block plus its offset in the block).
pub fn play_train(
    d: &Daemon,
    sink: &str,
    n: usize,
    spacing_blocks: usize,
    tail_blocks: usize,
    origin: Origin,
) -> Result<Vec<f64>> {
    play_train_at(d, sink, n, spacing_blocks, tail_blocks, origin, 10)
}

/// [`play_train`] through `pacat --latency-msec=latency_ms`. A sink that renders what its far
/// end asks for, in pieces as long as a round trip (the stock `module-tunnel-sink-new`), pads
/// a writer with a shorter buffer than that with silence: its train is stretched.
pub fn play_train_at(
    d: &Daemon,
    sink: &str,
    n: usize,
    spacing_blocks: usize,
    tail_blocks: usize,
    origin: Origin,
    latency_ms: u32,
) -> Result<Vec<f64>> {
    let latency = format!("--latency-msec={latency_ms}");
    let inputs_before = d.sink_input_count();
    let mut pacat = d
        .command("pacat")
        .args([
            "--playback",
            "--raw",
            "--format=s16le",
            "--rate=48000",
            "--channels=2",
            &latency,
            "--client-name=opus-tunnel-tests",
            "-d",
            sink,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    d.strays.register(pacat.id());
    let result = (|| {
        let t = Instant::now();
        while d.sink_input_count() <= inputs_before {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("pacat's stream did not appear on {sink} within 5 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut inp = pacat.stdin.take().ok_or_else(|| anyhow!("pacat stdin"))?;
        let spacing_blocks = spacing_blocks.max(2);
        let total = (n.max(1) - 1) * spacing_blocks + 2 + tail_blocks;
        let stream = train_bytes(n, spacing_blocks, total);
        let block_bytes = RATE as usize / 100 * CHANNELS * 2;
        // A sink that stops taking audio (a stalled tunnel) would block the writes for ever:
        // pacat is killed once the train is 10 s overdue, which ends them.
        let allowed = Duration::from_millis(10 * total as u64) + Duration::from_secs(10);
        let (done, overdue) = std::sync::mpsc::channel::<()>();
        let pid = pacat.id();
        let watchdog = std::thread::spawn(move || {
            if matches!(
                overdue.recv_timeout(allowed),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                return true;
            }
            false
        });
        let start = Instant::now();
        let mut sent = Vec::with_capacity(n);
        let mut written = Ok(());
        for (b, bytes) in stream.chunks(block_bytes).enumerate() {
            let due = start + Duration::from_millis(10 * b as u64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            written = inp.write_all(bytes);
            if written.is_err() {
                break;
            }
            if b % spacing_blocks == 0 && sent.len() < n {
                let k = sent.len();
                sent.push(origin.elapsed() + click_offset(k) as f64 / f64::from(RATE));
            }
        }
        drop(inp);
        let _ = done.send(());
        if watchdog.join().unwrap_or(false) {
            bail!(
                "{sink} did not take the click train within its length + 10 s ({:.1} s)",
                allowed.as_secs_f64()
            );
        }
        written?;
        Ok(sent)
    })();
    // pacat drains what it holds and exits at the end of its input; give it 3 s.
    let t = Instant::now();
    while matches!(pacat.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    d.strays.unregister(pacat.id());
    let _ = pacat.kill();
    let _ = pacat.wait();
    result
}

/// The `Latency:` of sink `sink` of `d` (`pactl list sinks`), µs.
pub fn sink_latency_usec(d: &Daemon, sink: &str) -> Result<(f64, f64)> {
    let props = d.sink_properties(sink)?;
    let v = props
        .get("Latency")
        .ok_or_else(|| anyhow!("no Latency for sink {sink}"))?;
    // "12345 usec, configured 10000 usec"
    let nums: Vec<f64> = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [now, configured, ..] => Ok((*now, *configured)),
        _ => bail!("cannot read the latency of {sink}: {v:?}"),
    }
}
