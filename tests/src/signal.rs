//! Test signals in and out of a daemon: generation, `pacat` playback, `parec` recording.
//!
//! Everything is interleaved s16le stereo at 48 kHz ([`RATE`], [`CHANNELS`]).

use crate::daemon::Daemon;
use crate::process::Strays;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const RATE: u32 = 48_000;
pub const CHANNELS: usize = 2;

/// Linear peak amplitude (full scale = 1.0) of a level in dBFS.
pub fn dbfs_to_amplitude(dbfs: f64) -> f64 {
    10f64.powf(dbfs / 20.0)
}

/// Interleaved s16le: one sine per channel (`freqs[c]` Hz, 0 = silence) at `peak_dbfs`
/// (peak amplitude relative to full scale), `seconds` long, with 5 ms fades at both ends.
pub fn tone(freqs: &[f64], peak_dbfs: f64, seconds: f64) -> Vec<i16> {
    let ch = freqs.len();
    let frames = (seconds * RATE as f64).round() as usize;
    let amp = dbfs_to_amplitude(peak_dbfs) * 32767.0;
    let fade = (RATE as usize / 200).min(frames / 2).max(1);
    let mut out = Vec::with_capacity(frames * ch);
    for i in 0..frames {
        let t = i as f64 / RATE as f64;
        let g = if i < fade {
            i as f64 / fade as f64
        } else if frames - i <= fade {
            (frames - i) as f64 / fade as f64
        } else {
            1.0
        };
        for f in freqs {
            let v = if *f > 0.0 {
                amp * g * (2.0 * std::f64::consts::PI * f * t).sin()
            } else {
                0.0
            };
            out.push(v.round().clamp(-32768.0, 32767.0) as i16);
        }
    }
    out
}

/// One second of a stereo tone without fades: with whole-Hz frequencies it repeats
/// seamlessly, for [`play_loop`].
pub fn tone_loop(left_hz: f64, right_hz: f64, peak_dbfs: f64) -> Vec<i16> {
    let amp = dbfs_to_amplitude(peak_dbfs) * 32767.0;
    let frames = RATE as usize; // 1 s: integer Hz frequencies repeat exactly
    let mut out = Vec::with_capacity(frames * 2);
    for i in 0..frames {
        let t = i as f64 / RATE as f64;
        for f in [left_hz, right_hz] {
            out.push((amp * (2.0 * std::f64::consts::PI * f * t).sin()).round() as i16);
        }
    }
    out
}

/// Writes samples as raw s16le.
pub fn write_s16le(path: &Path, samples: &[i16]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&to_bytes(samples))?;
    Ok(())
}

pub fn to_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Spawns the client `cmd` (pacat or parec) with `stdin` and `stdout` and no stderr, and
/// registers it in `strays`.
fn spawn_client(mut cmd: Command, stdin: Stdio, stdout: Stdio, strays: &Strays) -> Child {
    let child = cmd
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", cmd.get_program()));
    strays.register(child.id());
    child
}

/// A running `pacat`: killed (and reaped) on drop.
pub struct Player {
    child: Option<Child>,
    strays: Strays,
    stop: Arc<AtomicBool>,
    feeder: Option<JoinHandle<()>>,
}

impl Player {
    /// The pacat process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// True while pacat runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits for pacat to finish on its own (end of file) for at most `timeout`; true if it
    /// exited successfully.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(c) = self.child.as_mut() {
            match c.try_wait() {
                Ok(Some(st)) => {
                    let pid = c.id();
                    self.child = None;
                    self.strays.unregister(pid);
                    return st.success();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return false,
            }
        }
        false
    }

    /// Stops playback now.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.strays.kill_child(self.child.take());
        if let Some(t) = self.feeder.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pacat` playing raw s16le 48 kHz stereo into `sink`, as `cmd` (a `pacat` command set up
/// for some server).
pub(crate) fn pacat_into(mut cmd: Command, sink: &str) -> Command {
    cmd.args([
        "--playback",
        "--raw",
        "--format=s16le",
        "--rate=48000",
        "--channels=2",
        "--latency-msec=100",
        "--client-name=opus-tunnel-tests",
        "-d",
        sink,
    ]);
    cmd
}

fn pacat(d: &Daemon, sink: &str) -> Command {
    pacat_into(d.command("pacat"), sink)
}

/// Plays a raw s16le 48 kHz stereo file into `sink` (`pacat ... -d SINK < file`).
pub fn play(d: &Daemon, sink: &str, file: &Path) -> Player {
    let f = File::open(file).unwrap_or_else(|e| panic!("opening {}: {e}", file.display()));
    let child = spawn_client(pacat(d, sink), Stdio::from(f), Stdio::null(), &d.strays);
    let strays = d.strays.clone();
    Player {
        child: Some(child),
        strays,
        stop: Arc::new(AtomicBool::new(false)),
        feeder: None,
    }
}

/// Plays `samples` into `sink` over and over until the [`Player`] is stopped or dropped (a
/// thread writes to pacat's stdin; the pipe paces it).
pub fn play_loop(d: &Daemon, sink: &str, samples: Vec<i16>) -> Player {
    Player::looping(pacat(d, sink), &d.strays, samples)
}

impl Player {
    /// Runs `pacat` (a command from [`pacat_into`]) fed `samples` over and over by a thread
    /// (the pipe paces it) until stopped; registered in `strays` while it runs.
    pub(crate) fn looping(pacat: Command, strays: &Strays, samples: Vec<i16>) -> Player {
        assert!(!samples.is_empty(), "play_loop needs samples");
        let mut child = spawn_client(pacat, Stdio::piped(), Stdio::null(), strays);
        let mut stdin = child.stdin.take().expect("pacat stdin");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let bytes = to_bytes(&samples);
        let feeder = std::thread::Builder::new()
            .name("play_loop".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    // Blocks while the pipe is full; fails once pacat is gone.
                    if stdin.write_all(&bytes).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn feeder");
        Player {
            child: Some(child),
            strays: strays.clone(),
            stop,
            feeder: Some(feeder),
        }
    }
}

/// A running `parec` on a source; [`Recorder::read`] takes the next stretch of audio.
pub struct Recorder {
    child: Option<Child>,
    strays: Strays,
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    reader: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts `parec --raw --format=s16le --rate=48000 --channels=2 --latency-msec=50 -d
    /// SOURCE` and waits (at most 5 s) until it delivers its first audio.
    ///
    /// The wait matters: an idle `module-null-sink` sleeps in 2 s blocks and only picks up a
    /// new stream's latency at its next wake-up, so the first data of a fresh recording can
    /// take up to ~2 s. Once the recorder runs, the sink works in 50 ms blocks, and
    /// [`Recorder::read`] returns stretches that really are consecutive.
    pub fn start(d: &Daemon, source: &str) -> Recorder {
        let mut r = Recorder::spawn(d.command("parec"), &d.strays, source);
        if let Err(e) = r.first_audio(Duration::from_secs(5)) {
            panic!(
                "parec on {source} of {} delivered nothing in 5 s ({e})\n--- log tail ---\n{}",
                d.name(),
                d.log_tail(30)
            );
        }
        r
    }

    /// Runs `parec` (`cmd`, a `parec` command set up for some server) on `source` at 50 ms
    /// latency, registered in `strays` while it runs; a thread collects what it delivers.
    pub(crate) fn spawn(mut cmd: Command, strays: &Strays, source: &str) -> Recorder {
        cmd.args([
            "--raw",
            "--format=s16le",
            "--rate=48000",
            "--channels=2",
            "--latency-msec=50",
            "--client-name=opus-tunnel-tests",
            "-d",
            source,
        ]);
        let mut child = spawn_client(cmd, Stdio::null(), Stdio::piped(), strays);
        let stdout: ChildStdout = child.stdout.take().expect("parec stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("parec-reader".into())
            .spawn(move || {
                let mut stdout = stdout;
                let mut buf = vec![0u8; 16384];
                loop {
                    match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .expect("spawn reader");
        Recorder {
            child: Some(child),
            strays: strays.clone(),
            rx,
            pending: Vec::new(),
            reader: Some(reader),
        }
    }

    /// Waits at most `timeout` for parec's first audio.
    pub(crate) fn first_audio(&mut self, timeout: Duration) -> Result<(), RecvTimeoutError> {
        self.pending = self.rx.recv_timeout(timeout)?;
        Ok(())
    }

    /// The next `seconds` of audio (interleaved stereo), waiting at most `seconds + 5 s`.
    pub fn read(&mut self, seconds: f64) -> Result<Vec<i16>> {
        let want = (seconds * RATE as f64).round() as usize * CHANNELS * 2;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds + 5.0);
        while self.pending.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "parec delivered {} of {} bytes in {:.1} s",
                    self.pending.len(),
                    want,
                    seconds + 5.0
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("parec ended after {} of {} bytes", self.pending.len(), want)
                }
            }
        }
        let rest = self.pending.split_off(want);
        let bytes = std::mem::replace(&mut self.pending, rest);
        Ok(bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect())
    }

    /// Throws away what parec has delivered so far.
    pub fn discard(&mut self) {
        self.pending.clear();
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.strays.kill_child(self.child.take());
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

/// Records `seconds` of interleaved stereo from `source` (e.g. `null.monitor`).
pub fn record_raw(d: &Daemon, source: &str, seconds: f64) -> Result<Vec<i16>> {
    Recorder::start(d, source).read(seconds)
}

/// [`record_raw`], panicking with the daemon's log tail on failure.
pub fn record(d: &Daemon, source: &str, seconds: f64) -> Vec<i16> {
    record_raw(d, source, seconds).unwrap_or_else(|e| {
        panic!(
            "recording {source} on {}: {e:#}\n--- log tail ---\n{}",
            d.name(),
            d.log_tail(30)
        )
    })
}

/// A deterministic white-noise generator (xorshift64*), uniform in [-1, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// `seconds` (whole seconds, at least 1) of a music-like stereo loop for [`play_loop`]: on
/// each channel a three-note chord (left 220, 277, 330 Hz; right 247, 294, 370 Hz), every note
/// with six harmonics falling as 1/k, at `chord_dbfs` RMS (sine-referenced, as
/// [`crate::rms_dbfs`] reads it), plus independent white noise at `noise_dbfs` RMS over the
/// whole band. The envelope is steady; all frequencies are whole Hz, so the loop repeats
/// without a seam (the noise repeats every `seconds`).
///
/// The noise keeps every 1 ms block of the signal well above the dropout detector's floor
/// (median − 20 dB) when it is at most ~15 dB below the chord, and gives the encoder
/// something to spend bits on up to 24 kHz.
pub fn music_loop(seconds: u32, chord_dbfs: f64, noise_dbfs: f64) -> Vec<i16> {
    let frames = RATE as usize * seconds.max(1) as usize;
    let notes: [[f64; 3]; 2] = [[220.0, 277.0, 330.0], [247.0, 294.0, 370.0]];
    // RMS of one note with harmonics 1/k, k=1..6, unit fundamental: sqrt(Σ 1/(2k²)).
    let note_rms = (1..=6).map(|k| 0.5 / (k * k) as f64).sum::<f64>().sqrt();
    // Three notes of distinct frequencies add in power.
    let chord_rms = note_rms * 3f64.sqrt();
    // Sine-referenced: a level of x dBFS is an RMS of 10^(x/20)/√2.
    let gain = dbfs_to_amplitude(chord_dbfs) / std::f64::consts::SQRT_2 / chord_rms;
    // Uniform noise in [-a, a) has an RMS of a/√3.
    let noise_amp = dbfs_to_amplitude(noise_dbfs) / std::f64::consts::SQRT_2 * 3f64.sqrt();
    let mut noise = [Noise(0x9E37_79B9_7F4A_7C15), Noise(0xD1B5_4A32_D192_ED03)];
    let mut out = Vec::with_capacity(frames * 2);
    for i in 0..frames {
        let t = i as f64 / RATE as f64;
        for (c, chord) in notes.iter().enumerate() {
            let mut v = 0.0;
            for (n, f) in chord.iter().enumerate() {
                for k in 1..=6 {
                    // A fixed phase per partial, so that the peaks of the sum do not line up.
                    let phase = (n * 6 + k) as f64 * 0.7;
                    v += (2.0 * std::f64::consts::PI * f * k as f64 * t + phase).sin() / k as f64;
                }
            }
            let s = gain * v + noise_amp * noise[c].next();
            out.push((s * 32767.0).round().clamp(-32768.0, 32767.0) as i16);
        }
    }
    out
}

#[cfg(test)]
mod music_tests {
    use super::*;
    use crate::analysis::{channel, rms_dbfs};

    #[test]
    fn music_loop_levels() {
        let s = music_loop(1, -15.0, -30.0);
        assert_eq!(s.len(), RATE as usize * 2);
        for c in 0..2 {
            let l = rms_dbfs(&channel(&s, c, 2));
            // Chord and noise add in power: -15 dB and -30 dB make -14.86 dB.
            assert!((l + 14.86).abs() < 0.3, "channel {c}: {l} dBFS");
        }
        let noise = music_loop(1, -200.0, -30.0);
        let l = rms_dbfs(&channel(&noise, 0, 2));
        assert!((l + 30.0).abs() < 0.3, "noise alone: {l} dBFS");
        assert!(s.iter().all(|v| v.unsigned_abs() < 32000), "clipping");
    }
}
