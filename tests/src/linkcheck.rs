//! What a tunnel over an emulated link did, measured the same way by `tests/tests/udp.rs`,
//! `tests/tests/wan.rs` and the WAN table (`--bin wan`): the receiver stream's
//! `opus.tunnel.*` counters, the level of every 10 ms block of what arrived (a block 20 dB
//! below the median is a silence: concealment is fine, silence is not), and the
//! render-to-render latency of clicks (the sender's sink renders a click → the receiver's
//! sink renders it, from timed recordings of both monitors, as `playout.rs` p3 measures it).
use crate::timed::{play_train_at, sink_latency_usec, Origin, TimedRecorder};
use crate::{channel, rms_dbfs, Daemon, RATE};
use std::collections::HashMap;
use std::time::Duration;

/// `opus.tunnel.*` properties of the receiver's first sink-input.
pub fn stream_props(d: &Daemon) -> HashMap<String, String> {
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

/// `props[key]` as a number (0 when missing).
pub fn num(props: &HashMap<String, String>, key: &str) -> u64 {
    props.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `props[key]`, microseconds, in ms (NaN when missing).
pub fn ms_of(props: &HashMap<String, String>, key: &str) -> f64 {
    props
        .get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |us| us / 1000.0)
}

/// How far `key` went from `before` to `after`.
pub fn delta(before: &HashMap<String, String>, after: &HashMap<String, String>, key: &str) -> u64 {
    num(after, key).saturating_sub(num(before, key))
}

/// The median (NaN of nothing).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The level (dBFS) of each 10 ms block of interleaved stereo: the louder channel's.
pub fn block_levels(samples: &[i16]) -> Vec<f64> {
    let block = RATE as usize / 100 * 2;
    samples
        .chunks_exact(block)
        .map(|b| rms_dbfs(&channel(b, 0, 2)).max(rms_dbfs(&channel(b, 1, 2))))
        .collect()
}

/// The 10 ms blocks of a steady signal more than `below_db` under its median block.
pub struct Silences {
    /// The median block's level, dBFS.
    pub median_db: f64,
    /// The quietest block's level, dBFS.
    pub quietest_db: f64,
    /// Each silent block: its start (s) and level (dBFS).
    pub blocks: Vec<(f64, f64)>,
    /// Blocks looked at.
    pub total: usize,
}

impl Silences {
    /// Silent blocks per minute of audio.
    pub fn per_minute(&self) -> f64 {
        self.blocks.len() as f64 * 6000.0 / self.total.max(1) as f64
    }

    /// The runs of silent blocks in a row: each run's start (s) and its length in blocks.
    pub fn runs(&self) -> Vec<(f64, usize)> {
        let mut runs: Vec<(f64, usize)> = Vec::new();
        let mut last = f64::NEG_INFINITY;
        for &(at, _) in &self.blocks {
            match runs.last_mut() {
                Some((_, n)) if at - last < 0.015 => *n += 1,
                _ => runs.push((at, 1)),
            }
            last = at;
        }
        runs
    }

    /// The most silent blocks in a row (0 when none is silent).
    pub fn longest_run(&self) -> usize {
        self.runs().iter().map(|&(_, n)| n).max().unwrap_or(0)
    }
}

/// The silent blocks of `samples` (interleaved stereo), `below_db` under the median.
pub fn silences(samples: &[i16], below_db: f64) -> Silences {
    silences_where(samples, |median| median - below_db)
}

/// The blocks of `samples` under `floor_db` (dBFS): for a signal of known level, where a
/// recording that is silent throughout must count as silent.
pub fn silences_under(samples: &[i16], floor_db: f64) -> Silences {
    silences_where(samples, |_| floor_db)
}

fn silences_where(samples: &[i16], floor: impl Fn(f64) -> f64) -> Silences {
    let levels = block_levels(samples);
    let mut sorted = levels.clone();
    sorted.sort_by(f64::total_cmp);
    let median_db = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let quietest_db = sorted.first().copied().unwrap_or(f64::NAN);
    let floor_db = floor(median_db);
    let blocks = levels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l < floor_db)
        .map(|(i, &l)| (i as f64 * 0.01, l))
        .collect();
    Silences {
        median_db,
        quietest_db,
        blocks,
        total: levels.len(),
    }
}

/// A received sample above this (s16) is loud; a click's onset comes after 50 ms of quiet.
const LOUD: i16 = 4000;
const QUIET: usize = 2400;

/// Render-to-render latency (ms) of `clicks` clicks played into `sender`'s sink `sink` and
/// arriving at `receiver`'s sink `rsink` within `window` (the clicks are spaced further
/// apart than that, at least 0.5 s), the clicks after the first 3 s only (the steady
/// state). Clicks that cannot be matched at both ends are left out. The clicks are written
/// through `pacat --latency-msec=writer_ms` (see [`play_train_at`]).
pub fn render_to_render(
    sender: &Daemon,
    sink: &str,
    receiver: &Daemon,
    rsink: &str,
    clicks: usize,
    window: Duration,
    writer_ms: u32,
) -> anyhow::Result<Vec<f64>> {
    Ok(
        render_to_render_and_play(sender, sink, receiver, rsink, clicks, window, writer_ms)?
            .into_iter()
            .map(|(r2r, _)| r2r)
            .collect(),
    )
}

/// As [`render_to_render`], each click with its render-to-play latency too (ms): to the
/// receiving sink's clock playing it (render to render plus the receiving device's latency),
/// what a sink's reported latency is compared with.
pub fn render_to_render_and_play(
    sender: &Daemon,
    sink: &str,
    receiver: &Daemon,
    rsink: &str,
    clicks: usize,
    window: Duration,
    writer_ms: u32,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let window = window.as_secs_f64();
    let spacing_blocks = ((window * 100.0) as usize + 10).max(50);
    let origin = Origin::now();
    let rec_s = TimedRecorder::start(sender, &format!("{sink}.monitor"), origin)?;
    let rec_r = TimedRecorder::start(receiver, &format!("{rsink}.monitor"), origin)?;
    std::thread::sleep(Duration::from_millis(500));
    let sent = play_train_at(sender, sink, clicks, spacing_blocks, 30, origin, writer_ms)?;
    let (_, block) = sink_latency_usec(receiver, rsink)?;
    let block = block / 1e6;
    std::thread::sleep(Duration::from_millis(300));
    let (rs, rr) = (rec_s.finish(), rec_r.finish());
    let (on_s, on_r) = (rs.onsets(LOUD, QUIET), rr.onsets(LOUD, QUIET));
    let steady_from = sent.first().copied().unwrap_or(0.0) + 3.0;
    let mut r2r = Vec::new();
    for &fs in &on_s {
        let (Some(cs), Some(ws)) = (rs.clock_time(fs, 1.0, 0.01), rs.render_time(fs, 1.0, 0.01))
        else {
            continue;
        };
        let hit = on_r.iter().find_map(|&fr| {
            let cr = rr.clock_time(fr, 1.0, block)?;
            let wr = rr.render_time(fr, 1.0, block)?;
            (cr > cs && cr - cs < window).then_some((wr, cr))
        });
        if let (Some((wr, cr)), true) = (hit, ws >= steady_from) {
            r2r.push(((wr - ws) * 1000.0, (cr - ws) * 1000.0));
        }
    }
    Ok(r2r)
}
